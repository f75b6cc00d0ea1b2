//! Tests of the AWS test support itself, against a real moto: the server and its client,
//! the fault proxy, and the instance runner that boots agents from user data.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::InstanceType;
use fleetform_e2e::faults::{ActionStats, FaultError, FaultProxy};
use fleetform_e2e::moto::{ec2_client, Moto, TEST_AMI};
use fleetform_e2e::{binary, eventually, pids_with_arg_containing, process_alive, Fleetformd};

/// An EC2 client through `proxy` that makes one attempt per call.
fn one_attempt_client(proxy: &FaultProxy) -> aws_sdk_ec2::Client {
    ec2_client(&proxy.url, 1, Some(Duration::from_secs(10)))
}

#[tokio::test]
async fn moto_runs_lists_and_resets_instances() -> Result<()> {
    let moto = Moto::start().await?;
    ensure!(
        moto.url.starts_with("http://127.0.0.1:"),
        "moto must listen on loopback: {}",
        moto.url
    );
    ensure!(moto.instances().await?.is_empty(), "moto starts empty");

    let id = moto
        .run_untracked_instance(
            TEST_AMI,
            "t3.micro",
            &[("Name", "behind-our-back"), ("fleetform:cluster", "e2e")],
        )
        .await?;
    let instances = moto.instances().await?;
    ensure!(instances.len() == 1, "one instance: {instances:?}");
    let instance = &instances[0];
    ensure!(instance.id == id, "{instance:?}");
    ensure!(instance.instance_type == "t3.micro", "{instance:?}");
    ensure!(
        matches!(instance.state.as_str(), "pending" | "running"),
        "{instance:?}"
    );
    ensure!(
        instance.tags.get("Name").map(String::as_str) == Some("behind-our-back")
            && instance.tags.get("fleetform:cluster").map(String::as_str) == Some("e2e"),
        "tags: {:?}",
        instance.tags
    );
    ensure!(instance.launched_at.is_some(), "{instance:?}");
    ensure!(moto.live().await?.len() == 1);

    // Validation is on: an unknown AMI or instance type is refused, as by EC2.
    let ec2 = moto.ec2();
    let error = ec2
        .run_instances()
        .image_id("ami-00000000")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect_err("an unknown AMI is refused");
    ensure!(error.code() == Some("InvalidAMIID.NotFound"), "{error:?}");
    let error = ec2
        .run_instances()
        .image_id(TEST_AMI)
        .instance_type(InstanceType::from("t3.enormous"))
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect_err("an unknown instance type is refused");
    ensure!(
        error.code() == Some("InvalidInstanceType.NotFound"),
        "{error:?}"
    );

    // Terminated instances stay listed, but are not live.
    moto.terminate(&[&id]).await?;
    let instances = moto.instances().await?;
    ensure!(
        instances.len() == 1 && !instances[0].is_live(),
        "{instances:?}"
    );
    ensure!(moto.live().await?.is_empty());

    moto.reset().await?;
    ensure!(
        moto.instances().await?.is_empty(),
        "reset forgets instances"
    );
    Ok(())
}

#[tokio::test]
async fn proxy_injects_ec2_errors_and_forwards_the_rest() -> Result<()> {
    let moto = Moto::start().await?;
    let proxy = FaultProxy::start(&moto.url).await?;
    ensure!(proxy.url.starts_with("http://127.0.0.1:"), "{}", proxy.url);
    let ec2 = one_attempt_client(&proxy);

    // fail: answered by the proxy with EC2's error XML, the SDK reads the code.
    proxy.fail("DescribeInstances", FaultError::internal(), 1);
    let error = ec2
        .describe_instances()
        .send()
        .await
        .expect_err("the fault answers");
    ensure!(error.code() == Some("InternalError"), "{error:?}");
    ensure!(
        error.raw_response().map(|r| r.status().as_u16()) == Some(500),
        "{error:?}"
    );
    ec2.describe_instances()
        .send()
        .await
        .context("the fault was used up")?;

    // fail_when: only RunInstances of c5.large lacks capacity.
    proxy.fail_when(
        "RunInstances",
        |params| params.get("InstanceType").map(String::as_str) == Some("c5.large"),
        FaultError::capacity(),
        1,
    );
    let run = |instance_type: &'static str| {
        ec2.run_instances()
            .image_id(TEST_AMI)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .send()
    };
    let error = run("c5.large").await.expect_err("no c5.large capacity");
    ensure!(
        error.code() == Some("InsufficientInstanceCapacity"),
        "{error:?}"
    );
    ensure!(
        error
            .message()
            .is_some_and(|m| m.contains("sufficient c5.large capacity")),
        "{error:?}"
    );
    let output = run("t3.micro").await.context("t3.micro passes")?;
    let t3_id = output.instances()[0]
        .instance_id()
        .context("instance id")?
        .to_string();
    let output = run("c5.large")
        .await
        .context("the capacity fault was used up")?;
    let c5_id = output.instances()[0]
        .instance_id()
        .context("instance id")?
        .to_string();
    // Forwarded calls reached moto; the refused one created nothing.
    let mut in_moto: Vec<String> = moto.instances().await?.into_iter().map(|i| i.id).collect();
    in_moto.sort();
    let mut expected = vec![t3_id, c5_id];
    expected.sort();
    ensure!(
        in_moto == expected,
        "moto has {in_moto:?}, want {expected:?}"
    );

    // fail_every: every third DescribeInstances is throttled.
    proxy.fail_every(Some("DescribeInstances"), 3, FaultError::throttled());
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        outcomes.push(match ec2.describe_instances().send().await {
            Ok(_) => "ok".to_string(),
            Err(error) => error.code().unwrap_or("?").to_string(),
        });
    }
    ensure!(
        outcomes
            == [
                "ok",
                "ok",
                "RequestLimitExceeded",
                "ok",
                "ok",
                "RequestLimitExceeded"
            ],
        "{outcomes:?}"
    );
    // A client with the SDK's standard retries gets through the throttling.
    let retrying = ec2_client(&proxy.url, 3, Some(Duration::from_secs(10)));
    for _ in 0..3 {
        retrying
            .describe_instances()
            .send()
            .await
            .context("retries get through")?;
    }

    // fail_every over all actions.
    proxy.clear();
    proxy.fail_every(None, 2, FaultError::throttled());
    ec2.describe_regions().send().await.context("first call")?;
    let error = ec2
        .describe_instances()
        .send()
        .await
        .expect_err("second call");
    ensure!(error.code() == Some("RequestLimitExceeded"), "{error:?}");
    proxy.clear();

    // delay: the request is held before forwarding.
    proxy.delay("DescribeRegions", Duration::from_millis(700), 1);
    let started = Instant::now();
    ec2.describe_regions().send().await?;
    ensure!(started.elapsed() >= Duration::from_millis(700));
    let started = Instant::now();
    ec2.describe_regions().send().await?;
    ensure!(
        started.elapsed() < Duration::from_millis(700),
        "the delay was used up"
    );

    let stats = proxy.stats();
    // fail: 1 of 2; every third: 2 of 6; retrying: the 9th of the rule's 10; all actions: 1.
    ensure!(
        stats["DescribeInstances"]
            == ActionStats {
                seen: 13,
                faulted: 5,
                forwarded: 8
            },
        "{:?}",
        stats["DescribeInstances"]
    );
    ensure!(
        stats["RunInstances"]
            == ActionStats {
                seen: 3,
                faulted: 1,
                forwarded: 2
            },
        "{:?}",
        stats["RunInstances"]
    );
    ensure!(
        stats["DescribeRegions"]
            == ActionStats {
                seen: 3,
                faulted: 0,
                forwarded: 3
            },
        "{:?}",
        stats["DescribeRegions"]
    );
    Ok(())
}

#[tokio::test]
async fn held_run_instances_reaches_moto_but_is_never_answered() -> Result<()> {
    let moto = Moto::start().await?;
    let proxy = FaultProxy::start(&moto.url).await?;
    let ec2 = ec2_client(&proxy.url, 1, Some(Duration::from_secs(2)));

    let mut hold = proxy.hold_after_forward("RunInstances");
    let call = {
        let ec2 = ec2.clone();
        tokio::spawn(async move {
            ec2.run_instances()
                .image_id(TEST_AMI)
                .instance_type(InstanceType::T3Micro)
                .min_count(1)
                .max_count(1)
                .send()
                .await
        })
    };
    let body = tokio::time::timeout(Duration::from_secs(10), hold.forwarded())
        .await
        .context("the held request was not forwarded")??;
    let id = body
        .split("<instanceId>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .with_context(|| format!("no instance id in {body}"))?
        .to_string();
    ensure!(
        moto.instances().await?.iter().any(|i| i.id == id),
        "moto has the instance while the client waits"
    );
    let result = call.await?;
    ensure!(
        matches!(result, Err(SdkError::TimeoutError(_))),
        "the client times out: {result:?}"
    );
    hold.release();
    ensure!(proxy.action_stats("RunInstances").forwarded == 1);

    // Released: the connection is dropped without an answer, so the call fails at once.
    let mut hold = proxy.hold_after_forward("RunInstances");
    let patient = ec2_client(&proxy.url, 1, Some(Duration::from_secs(30)));
    let call = tokio::spawn(async move {
        patient
            .run_instances()
            .image_id(TEST_AMI)
            .instance_type(InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .send()
            .await
    });
    tokio::time::timeout(Duration::from_secs(10), hold.forwarded()).await??;
    hold.release();
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .context("release did not drop the connection")??;
    ensure!(
        matches!(
            result,
            Err(SdkError::DispatchFailure(_) | SdkError::ResponseError(_))
        ),
        "{result:?}"
    );
    ensure!(moto.instances().await?.len() == 2);

    // Later requests pass.
    ec2.describe_instances().send().await?;
    Ok(())
}

#[tokio::test]
async fn runner_boots_agents_from_user_data_and_stops_them_with_the_instance() -> Result<()> {
    let moto = Moto::start().await?;
    let work = tempfile::Builder::new()
        .prefix("fleetform-runner-")
        .tempdir()?;
    let runner = moto.runner(binary("fleetform-agent"), work.path().to_path_buf());

    // Nothing listens there: the agent keeps retrying its sync, which is all this needs.
    let fake_server = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", listener.local_addr()?)
    };
    let user_data = format!(
        "#!/bin/bash\nset -euo pipefail\ncat >/etc/fleetform/agent.env <<'EOF'\n\
         FLEETFORM_SERVER={fake_server}\nFLEETFORM_AGENT_TOKEN=tok-e2e-123\nEOF\n\
         exec /usr/local/bin/fleetform-agent\n"
    );
    let bootable = moto
        .run_instance(TEST_AMI, "t3.micro", &[], Some(&user_data))
        .await?;
    let untracked = moto
        .run_untracked_instance(TEST_AMI, "t3.micro", &[("Name", "stray")])
        .await?;

    let pid = eventually(Duration::from_secs(10), "the agent to boot", || async {
        Ok(runner.agent_pid(&bootable))
    })
    .await?;
    ensure!(runner.booted() == vec![bootable.clone()]);
    ensure!(process_alive(pid), "agent {pid} runs");
    let work_dir = work.path().join(&bootable);
    ensure!(
        pids_with_arg_containing(&work_dir.to_string_lossy()).contains(&pid),
        "the agent's command line names its work directory"
    );
    ensure!(pids_with_arg_containing("tok-e2e-123").contains(&pid));
    ensure!(work.path().join(format!("{bootable}.log")).exists());
    eventually(
        Duration::from_secs(5),
        "the stray to be unbootable",
        || async { Ok(runner.unbootable().contains(&untracked).then_some(())) },
    )
    .await?;

    // Held: an instance seen meanwhile is never booted, even once boots resume.
    runner.hold_boots(true);
    let held = moto
        .run_instance(TEST_AMI, "t3.micro", &[], Some(&user_data))
        .await?;
    eventually(
        Duration::from_secs(5),
        "the runner to see the held instance",
        || async { Ok(runner.held().contains(&held).then_some(())) },
    )
    .await?;
    runner.hold_boots(false);
    let later = moto
        .run_instance(TEST_AMI, "t3.micro", &[], Some(&user_data))
        .await?;
    let later_pid = eventually(
        Duration::from_secs(10),
        "the later instance to boot",
        || async { Ok(runner.agent_pid(&later)) },
    )
    .await?;
    ensure!(runner.agent_pid(&held).is_none(), "{:?}", runner.booted());

    // The instance terminates: its agent stops (SIGTERM, as a VM shutting down).
    let stopping = Instant::now();
    moto.terminate(&[&bootable]).await?;
    eventually(Duration::from_secs(10), "the agent to stop", || async {
        Ok((!process_alive(pid)).then_some(()))
    })
    .await?;
    eprintln!(
        "agent stopped {:?} after the termination",
        stopping.elapsed()
    );
    ensure!(process_alive(later_pid), "other agents keep running");

    // Dropping the runner kills the agents it started.
    drop(runner);
    ensure!(
        !process_alive(later_pid),
        "the runner's drop kills its agents"
    );
    Ok(())
}

#[test]
fn fleetformd_start_with_config_passes_the_file_also_on_restart() -> Result<()> {
    let config = "[[location]]\nname = \"sim-e2e\"\ndriver = \"sim\"\n";
    let mut server = Fleetformd::start_with_config(config)?;
    let config_path = server.dir.path().join("fleetformd.toml");
    ensure!(std::fs::read_to_string(&config_path)? == config);
    let uses_config = |pid: u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = String::from_utf8_lossy(&cmdline)
            .split('\0')
            .map(str::to_string)
            .collect();
        args.windows(2)
            .any(|pair| pair[0] == "--config" && pair[1] == config_path.to_string_lossy())
    };
    ensure!(uses_config(server.pid()), "log:\n{}", server.log());
    server.restart()?;
    ensure!(uses_config(server.pid()), "log:\n{}", server.log());

    let plain = Fleetformd::start()?;
    ensure!(!uses_config(plain.pid()));
    Ok(())
}
