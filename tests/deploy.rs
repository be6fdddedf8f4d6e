//! deploy/ agrees with the workspace (issue 7 point 1): the Dockerfile builds and copies the
//! binary Cargo.toml declares with a toolchain at least its rust-version; the Kubernetes job
//! spec parses as a job and its worker count equals the StatefulSet's replicas; the compose
//! file's coordinator waits for as many workers as it starts; every `--flag` the deploy files
//! pass to funnel exists in the binary (`funnel coordinator|worker|gen-data --help`), the
//! `--http-listen` the probes need included. Schema validation of the
//! manifests, `docker compose config` and shellcheck run in scripts/check-deploy.sh.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first integer after `key` in `text`.
fn number_after(text: &str, key: &str) -> u64 {
    let at = text.find(key).unwrap_or_else(|| panic!("no {key:?}")) + key.len();
    text[at..]
        .trim_start_matches([' ', '"', ',', ':', '='])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key:?}"))
}

#[test]
fn the_dockerfile_builds_the_workspace_binary_with_a_new_enough_toolchain() {
    let cargo = read("Cargo.toml");
    let docker = read("deploy/Dockerfile");
    assert!(
        cargo.contains("[[bin]]\nname = \"funnel\""),
        "the binary is `funnel`"
    );
    assert!(
        docker.contains("cargo build --release --locked --bin funnel"),
        "{docker}"
    );
    assert!(docker.contains("COPY --from=build /src/target/release/funnel /usr/local/bin/funnel"));
    assert!(docker.contains("USER 10001"), "non-root");
    let version = |text: &str, key: &str| -> (u64, u64) {
        let at = text.find(key).unwrap_or_else(|| panic!("no {key}")) + key.len();
        let v: Vec<u64> = text[at..]
            .trim_start_matches(['"', ' ', '='])
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .map(|p| p.parse().expect("version number"))
            .collect();
        (v[0], v[1])
    };
    let needed = version(&cargo, "rust-version = ");
    let image = version(&docker, "FROM rust:");
    assert!(
        image >= needed,
        "rust:{image:?} is older than rust-version {needed:?}"
    );
}

#[test]
fn the_kubernetes_job_parses_and_matches_the_worker_replicas() {
    let text = read("deploy/k8s/job.toml");
    let job = funnel_common::spec::Job::parse(&text, "deploy/k8s/job.toml").expect("a valid job");
    let replicas = number_after(&read("deploy/k8s/workers.yaml"), "replicas:");
    assert_eq!(job.spec.cluster.workers as u64, replicas);
    let kustomization = read("deploy/k8s/kustomization.yaml");
    for file in [
        "secret.yaml",
        "coordinator.yaml",
        "workers.yaml",
        "job.toml",
    ] {
        assert!(kustomization.contains(file), "kustomization lists {file}");
        read(&format!("deploy/k8s/{file}"));
    }
}

#[test]
fn the_compose_coordinator_waits_for_the_workers_it_starts() {
    let compose = read("deploy/compose.yaml");
    let workers = number_after(&compose, "\"--workers\"");
    let replicas = number_after(&compose, "replicas:");
    assert_eq!(workers, replicas);
}

/// The `--flags` of `text` (the words starting with two dashes, up to `=`, quote or space).
fn flags(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '[' | ']'))
        .filter(|w| {
            w.starts_with("--")
                && w[2..].starts_with(|c: char| c.is_ascii_lowercase())
                && w[2..]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c == '=')
        })
        .map(|w| w.split('=').next().unwrap_or(w).to_string())
        .collect()
}

#[test]
fn every_flag_the_deploy_files_pass_exists_in_the_binary() {
    let help = |sub: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_funnel"))
            .args([sub, "--help"])
            .output()
            .expect("funnel runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let known = ["coordinator", "worker", "gen-data"].map(help).join("\n");
    let mut checked = 0;
    for file in [
        "deploy/k8s/coordinator.yaml",
        "deploy/k8s/workers.yaml",
        "deploy/compose.yaml",
        "deploy/slurm/funnel.sbatch",
    ] {
        for flag in flags(&read(file)) {
            // Flags of other programs in these files (sbatch, srun, the MinIO client).
            if [
                "--nodes",
                "--ntasks",
                "--ntasks-per-node",
                "--nodelist",
                "--overlap",
                "--ignore-existing",
                "--exclusive",
                "--job-name",
            ]
            .contains(&flag.as_str())
            {
                continue;
            }
            assert!(
                known.contains(&flag),
                "{file} passes {flag}, which funnel does not know"
            );
            checked += 1;
        }
    }
    // The health endpoints the probes use are among them.
    assert!(checked >= 10, "only {checked} flags found");
    assert!(read("deploy/k8s/coordinator.yaml").contains("--http-listen"));
    assert!(read("deploy/k8s/workers.yaml").contains("--http-listen"));
}
