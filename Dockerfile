# Images for the API and every worker; docker-compose.yml picks the target and the command.
#   serve     the slim install (no TensorFlow): the API, the inference and OCR workers, Flower
#   serve-gpu serve with onnxruntime-gpu in place of onnxruntime: the inference worker on a GPU
#   train     serve + semtag[train] (TensorFlow, tf2onnx): the batch worker (training, export, autoencoder)
FROM python:3.11-slim-bookworm AS serve
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
ENV SEMTAG_DATA_DIR=/data
EXPOSE 8000
CMD ["semtag", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM serve AS serve-gpu
RUN pip uninstall -y onnxruntime && pip install --no-cache-dir "onnxruntime-gpu==1.32.0"

FROM serve AS train
# On a GPU host build with --build-arg GPU=1 for CUDA TensorFlow.
ARG GPU=0
RUN pip install --no-cache-dir ".[train]" \
    && if [ "$GPU" = "1" ]; then pip uninstall -y tensorflow-cpu \
      && pip install --no-cache-dir "tensorflow[and-cuda]==2.21.0"; fi
