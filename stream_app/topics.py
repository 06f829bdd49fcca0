"""Every topic the app uses, with its partition count: the one place names come from.

Internal topics (repartition and command topics the app owns) are prefixed with the app
id so that two apps on one cluster never share them.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream_app.settings import Settings


@dataclass(frozen=True, slots=True)
class TopicNames:
    inventory_changes: str
    inventory_changes_dlq: str
    pre_orders: str
    pre_orders_dlq: str
    reservation_commands: str
    reservation_commands_dlq: str
    reservation_events: str
    pre_order_results: str
    # internal
    internal: str  # repartition and command messages, kind in the key (agents.internal)
    internal_dlq: str
    release_commands: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        internal = settings.app_id
        return cls(
            inventory_changes=settings.topic_inventory_changes,
            inventory_changes_dlq=settings.dlq(settings.topic_inventory_changes),
            pre_orders=settings.topic_pre_orders,
            pre_orders_dlq=settings.dlq(settings.topic_pre_orders),
            reservation_commands=settings.topic_reservation_commands,
            reservation_commands_dlq=settings.dlq(settings.topic_reservation_commands),
            reservation_events=settings.topic_reservation_events,
            pre_order_results=settings.topic_pre_order_results,
            internal=f"{internal}-internal",
            internal_dlq=f"{internal}-internal-dlq",
            release_commands=f"{internal}-release-commands",
        )

    def all(self) -> list[str]:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def changelog_topics(settings: Settings, table_names: list[str]) -> list[str]:
    """Faust names a table's changelog ``<app id>-<table>-changelog``."""
    return [f"{settings.app_id}-{name}-changelog" for name in table_names]
