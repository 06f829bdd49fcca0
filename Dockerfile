FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_app ./stream_app
COPY agents ./agents
COPY tables ./tables
RUN pip install --no-cache-dir .
EXPOSE 6066 8787
CMD ["stream-app", "worker"]
