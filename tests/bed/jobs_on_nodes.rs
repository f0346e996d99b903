//! The test bed is real: kube-scheduler binds Jobs' pods to simulated nodes, the node executor runs
//! them from the exact pod spec (image mapping, hostPath, security context, exit codes, termination
//! messages), the garbage collector removes a deleted Job's pods.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use serde_json::{Value, json};
use support::{Bed, eventually, namespace};

fn job(name: &str, pod_spec: Value) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}}
    }))
    .unwrap()
}

async fn run_job(client: &Client, ns: &str, job: Job) -> (Job, Pod) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let name = job.metadata.name.clone().unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let finished = eventually(&format!("job {name} to finish"), Duration::from_secs(60), || async {
        let j = jobs.get(&name).await.ok()?;
        let done = j
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
        done.then_some(j)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels(&format!("job-name={name}"))).await.unwrap();
    assert_eq!(list.items.len(), 1, "one pod for job {name}");
    (finished, list.items.into_iter().next().unwrap())
}

fn job_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

#[tokio::test]
async fn a_job_is_scheduled_onto_its_node_and_writes_into_that_nodes_host_path() {
    let bed = Bed::get();
    let client = bed.client().await;
    let ns = namespace(&client, "bed-job").await;
    let node = &bed.nodes[1];
    let file = format!("/var/lib/modelpack/bed-check/{ns}.yaml");
    let spec = json!({
        "restartPolicy": "Never",
        "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": [{
            "name": "probe",
            "image": "registry.example.com/team/modelpack-operator:any-tag",
            "args": ["crd", "--output", file],
            "volumeMounts": [{"name": "cache", "mountPath": "/var/lib/modelpack"}],
            "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false}
        }],
        "volumes": [{"name": "cache", "hostPath": {"path": "/var/lib/modelpack", "type": "DirectoryOrCreate"}}]
    });
    let (finished, pod) = run_job(&client, &ns, job("probe", spec)).await;
    assert!(job_condition(&finished, "Complete"), "job did not complete: {:?}", finished.status);
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.as_str()),
        "scheduled onto the selected node"
    );

    let written = std::fs::read_to_string(bed.node_path(node, &file)).expect("the file in the node's directory");
    assert_eq!(written, modelpack_operator::api::crds_yaml().unwrap());
    for other in bed.nodes.iter().filter(|n| *n != node) {
        assert!(!bed.node_path(other, &file).exists(), "file leaked onto node {other}");
    }
    assert!(!std::path::Path::new(&file).exists(), "the container wrote onto the host's real {file}");
    let status = &pod.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(status.state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 0);
}

#[tokio::test]
async fn exit_codes_and_termination_messages_reach_pod_status() {
    let bed = Bed::get();
    let client = bed.client().await;
    let ns = namespace(&client, "bed-exit").await;
    let spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "containers": [{
            "name": "usage",
            "image": "modelpack-operator",
            "args": ["no-such-subcommand"],
            "terminationMessagePolicy": "FallbackToLogsOnError"
        }]
    });
    let (finished, pod) = run_job(&client, &ns, job("usage", spec)).await;
    assert!(job_condition(&finished, "Failed"), "{:?}", finished.status);
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let terminated = status.container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!(terminated.exit_code, 2, "clap's usage error exit code");
    assert!(terminated.message.unwrap_or_default().contains("no-such-subcommand"), "log tail as termination message");
}

#[tokio::test]
async fn a_foreign_image_fails_the_pod_with_a_clear_reason() {
    let bed = Bed::get();
    let client = bed.client().await;
    let ns = namespace(&client, "bed-image").await;
    let spec = json!({
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": "docker.io/library/busybox:1.36", "command": ["sh", "-c", "true"]}]
    });
    let (finished, pod) = run_job(&client, &ns, job("foreign", spec)).await;
    assert!(job_condition(&finished, "Failed"));
    let status = pod.status.unwrap();
    assert_eq!(status.reason.as_deref(), Some("ErrImageNeverPull"));
    let waiting = status.container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ErrImageNeverPull"));
    assert!(waiting.message.unwrap().contains("busybox"));
}

#[tokio::test]
async fn the_garbage_collector_deletes_a_deleted_jobs_pods() {
    let bed = Bed::get();
    let client = bed.client().await;
    let ns = namespace(&client, "bed-gc").await;
    let spec = json!({
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": "modelpack-operator:dev", "args": ["crd"]}]
    });
    let (_, pod) = run_job(&client, &ns, job("gc", spec)).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let background = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    jobs.delete("gc", &background).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod_name = pod.metadata.name.unwrap();
    eventually("the garbage collector to delete the job's pod", Duration::from_secs(60), || async {
        matches!(pods.get_opt(&pod_name).await, Ok(None)).then_some(())
    })
    .await;
}
