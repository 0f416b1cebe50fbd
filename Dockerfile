# twophase app: docker build -t twophase . && docker run -p 8501:8501 -v twophase-cache:/app/cache twophase
# CPU torch by default; for CUDA: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TWOPHASE_CACHE_DIR=/app/cache

WORKDIR /app

# torch first, from the chosen index, so `pip install .` finds it satisfied and never pulls another build
RUN pip install --index-url "${TORCH_INDEX}" torch torchvision

COPY pyproject.toml README.md ./
COPY twophase_core ./twophase_core
RUN pip install .

COPY app.py app_common.py ./
COPY pages ./pages
COPY .streamlit ./.streamlit

RUN useradd --create-home --uid 10001 twophase \
    && mkdir -p /app/cache \
    && chown twophase:twophase /app/cache
USER twophase

VOLUME ["/app/cache"]
EXPOSE 8501

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4)"

CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
