"""Pure business rules (no I/O, no Faust, no clock): inventory ATP, pre-order validation,
future ATP, priority, the per SKU/location reservation book and the nightly release."""
