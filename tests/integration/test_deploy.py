import pytest

pytestmark = pytest.mark.integration


def test_deploy_creates_pool_and_scheduled_deployment(workspace):
    from prefect.client.orchestration import get_client

    from flows.deploy import deploy

    deployment_id = deploy(
        root=workspace,
        name="nightly",
        pool="dlops-test",
        cron="15 2 * * *",
        overrides=["train.max_epochs=3"],
    )
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(deployment_id)
        pool = client.read_work_pool("dlops-test")
    assert pool.type == "process"
    assert dep.work_pool_name == "dlops-test"
    assert dep.entrypoint == "flows/pipeline.py:pipeline"
    assert dep.parameters == {"overrides": ["train.max_epochs=3"]}
    assert [s.schedule.cron for s in dep.schedules] == ["15 2 * * *"]
