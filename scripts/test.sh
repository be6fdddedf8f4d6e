#!/usr/bin/env bash
# The whole test suite, with all set-up, on a fresh machine: Python test packages, Debian's
# chromium (the status page test), the deploy files' validation (scripts/check-deploy.sh), the real S3 server (Ceph radosgw,
# scripts/s3-server.sh), the Rust tests with S3 required, the Python tests,
# then libtorch from PyPI (scripts/libtorch.sh) and the model tests again on the tch backend.
# This is the README's test command; .ci/run runs exactly this after fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."

stage_start=$SECONDS
stage() { # name: prints how long the previous stage took
  echo "== [test.sh] $1 (previous stage took $((SECONDS - stage_start)) s)"
  stage_start=$SECONDS
}

stage "python test packages"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -r tests/python/requirements.txt

stage "chromium (Debian) for the status page test"
# tests/status_page.rs drives a real headless browser; with FUNNEL_REQUIRE_BROWSER=1 it fails
# instead of skipping when none is installed.
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
chromium --version
export FUNNEL_REQUIRE_BROWSER=1

stage "deploy files (scripts/check-deploy.sh)"
bash scripts/check-deploy.sh

stage "S3 server (radosgw)"
export FUNNEL_S3_DIR=${FUNNEL_S3_DIR:-/tmp/funnel-s3-tests}
scripts/s3-server.sh start
trap 'scripts/s3-server.sh stop >/dev/null 2>&1 || true' EXIT
# shellcheck disable=SC1091
source "$FUNNEL_S3_DIR/env.sh"
export FUNNEL_REQUIRE_S3=1

stage "cargo test (workspace)"
cargo test --workspace --locked

stage "python tests"
FUNNEL_BIN="$PWD/target/debug/funnel" python3 -m pytest -q tests/python

stage "libtorch 2.9.0 from PyPI (scripts/libtorch.sh)"
# shellcheck source=scripts/libtorch.sh
source scripts/libtorch.sh

stage "cargo test: model tests on LibTorch (--features tch, FUNNEL_TEST_BACKEND=tch)"
# The same model suite as above, every model built on the tch backend (docs/backends.md).
FUNNEL_TEST_BACKEND=tch cargo test -p funnel-common --features tch --locked --lib model::

stage "done"
