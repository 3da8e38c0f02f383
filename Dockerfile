# One image for the API and every worker; docker-compose.yml picks the command.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr fonts-dejavu-core fonts-dejavu-extra libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY workers workers
COPY services services
COPY models models
COPY migrations migrations
COPY semtag semtag
RUN pip install --no-cache-dir . "flower==2.2.0"
# GPU image (docker-compose's worker-inference builds with GPU=1): CUDA builds of TensorFlow and ONNX Runtime.
ARG GPU=0
RUN if [ "$GPU" = "1" ]; then pip uninstall -y tensorflow-cpu onnxruntime \
    && pip install --no-cache-dir "tensorflow[and-cuda]==2.21.0" "onnxruntime-gpu==1.32.0"; fi
ENV SEMTAG_DATA_DIR=/data
EXPOSE 8000
CMD ["semtag", "serve", "--host", "0.0.0.0", "--port", "8000"]
