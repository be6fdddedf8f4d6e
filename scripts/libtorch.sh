# shellcheck shell=bash
# Source this (bash): installs libtorch 2.9.0 from PyPI into a virtual environment, if not there
# yet, and exports what a `--features tch` build and its tests need:
#
#   source scripts/libtorch.sh
#   cargo test -p funnel-common --features tch --lib model::   # with FUNNEL_TEST_BACKEND=tch
#
#   LIBTORCH          the torch package directory (include/, lib/): torch-sys builds against it
#                     without running Python. Already set: used as it is, nothing is installed.
#   LD_LIBRARY_PATH   gains $LIBTORCH/lib, so that binaries built with `tch` load libtorch.
#   FUNNEL_TORCH_VENV where to install; default ~/.cache/funnel/venv-torch-2.9.0, outside the
#                     clone so that CI's fresh clones on one machine reuse it (.venv-torch at the
#                     repository root is git-ignored, for those who prefer it there).
#
# Pinned wheels and why each is there: scripts/libtorch-requirements.txt; docs/backends.md.
# About 3.4 GB to download and 5.4 GB installed (74 s here), once; a second run only checks the
# versions (under 1 s).

_funnel_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${LIBTORCH:-} ]]; then
  FUNNEL_TORCH_VENV=${FUNNEL_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/funnel/venv-torch-2.9.0}
  [[ -x $FUNNEL_TORCH_VENV/bin/python ]] || python3 -m venv "$FUNNEL_TORCH_VENV"
  "$FUNNEL_TORCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --root-user-action=ignore --no-deps --only-binary :all: \
    -r "$_funnel_root/scripts/libtorch-requirements.txt"
  LIBTORCH="$("$FUNNEL_TORCH_VENV/bin/python" -c \
    'import sysconfig; print(sysconfig.get_path("platlib"))')/torch"
  export LIBTORCH
fi
[[ -f $LIBTORCH/include/torch/csrc/api/include/torch/torch.h ]] ||
  { echo "libtorch.sh: no libtorch headers under LIBTORCH=$LIBTORCH" >&2; return 1; }
# torch-sys would otherwise prefer `import torch` (LIBTORCH_USE_PYTORCH=1), which needs every
# CUDA wheel and the Python dependencies; LIBTORCH needs neither.
unset LIBTORCH_USE_PYTORCH
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _funnel_root
