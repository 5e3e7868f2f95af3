import pytest

pytestmark = pytest.mark.integration


def test_deploy_creates_pool_and_both_scheduled_deployments(dvc_project, monkeypatch):
    from prefect.client.orchestration import get_client

    from flows.deploy import DATA_CHANGED, NIGHTLY, PIPELINE_FLOW, deploy

    monkeypatch.delenv("DLOPS_REPO", raising=False)
    deployed = deploy(
        root=dvc_project,
        pool="dlops-test",
        nightly_cron="15 2 * * *",
        watch_cron="*/5 * * * *",
        overrides=["train.max_epochs=3"],
    )
    assert deployed.repository == str(dvc_project.resolve())
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment(deployed.nightly)
        watch = client.read_deployment(deployed.data_changed)
        pool = client.read_work_pool("dlops-test")
    assert pool.type == "process"
    assert (nightly.name, watch.name) == (NIGHTLY, DATA_CHANGED)
    assert nightly.work_pool_name == watch.work_pool_name == "dlops-test"
    assert nightly.entrypoint == "flows/pipeline.py:pipeline"
    assert watch.entrypoint == "flows/watch.py:watch_data"
    # a deployment run's parameters are its own, applied to its clone (never to params.yaml)
    assert nightly.parameters == {"overrides": ["train.max_epochs=3"]}
    assert watch.parameters == {
        "overrides": ["train.max_epochs=3"],
        "deployment": f"{PIPELINE_FLOW}/{NIGHTLY}",
    }
    assert [s.schedule.cron for s in nightly.schedules] == ["15 2 * * *"]
    assert [s.schedule.cron for s in watch.schedules] == ["*/5 * * * *"]
    # each run clones the repository (Prefect's git_clone pull step), at the deployed branch
    assert any("git_clone" in str(step) for step in nightly.pull_steps), nightly.pull_steps
    # deploying twice updates the same deployments (no duplicates)
    again = deploy(root=dvc_project, pool="dlops-test", nightly_cron="15 2 * * *")
    assert (again.nightly, again.data_changed) == (deployed.nightly, deployed.data_changed)
