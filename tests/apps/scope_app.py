"""A function that probes its own container socket with the official client's stub: what it may
do (call its app's functions, a deployed app's function by name, read its own app) and what it
may not (other apps' listing, logs, containers and lifecycle)."""

import modal

app = modal.App("kiln-test-scope")
image = modal.Image.debian_slim()


@app.function(image=image)
def double(x: int) -> int:
    return 2 * x


async def _outcome(call) -> str:
    from grpclib.exceptions import GRPCError

    try:
        await call
    except GRPCError as exc:
        return f"{exc.status.name}: {exc.message}"
    return "allowed"


@app.function(image=image)
async def probe(
    other_app_id: str, deployed_app: str, own_app_id: str = "", foreign_volume_id: str = ""
) -> dict:
    """Raw requests on the container's own socket (MODAL_SERVER_URL), with the official client's
    grpclib stub, as any code in the container could send them."""
    import os
    from urllib.parse import urlparse

    from grpclib.client import Channel
    from modal_proto import api_pb2
    from modal_proto.api_grpc import ModalClientStub

    # unix://localhost/.kiln/modal.sock: the socket's path, parsed as the client parses it.
    channel = Channel(path=urlparse(os.environ["MODAL_SERVER_URL"]).path)
    stub = ModalClientStub(channel)
    outcomes = {
        "AppList": await _outcome(stub.AppList(api_pb2.AppListRequest())),
        "AppStop": await _outcome(stub.AppStop(api_pb2.AppStopRequest(app_id=other_app_id))),
        "AppGetLogs": await _outcome(
            stub.AppFetchLogs(api_pb2.AppFetchLogsRequest(app_id=other_app_id, limit=10))
        ),
        "TaskList": await _outcome(stub.TaskList(api_pb2.TaskListRequest(app_id=other_app_id))),
        "AppDeploymentHistory": await _outcome(
            stub.AppDeploymentHistory(api_pb2.AppDeploymentHistoryRequest(app_id=other_app_id))
        ),
        "FunctionGet other environment": await _outcome(
            stub.FunctionGet(
                api_pb2.FunctionGetRequest(
                    app_name=deployed_app, object_tag="echo", environment_name="elsewhere"
                )
            )
        ),
        "Secret of another environment": await _outcome(
            stub.SecretGetOrCreate(
                api_pb2.SecretGetOrCreateRequest(deployment_name="any", environment_name="elsewhere")
            )
        ),
    }
    if foreign_volume_id:  # a sandbox of its own app, mounting a Volume of another environment
        mount = api_pb2.VolumeMount(volume_id=foreign_volume_id, mount_path="/mnt/v")
        definition = api_pb2.Sandbox(entrypoint_args=["true"], volume_mounts=[mount])
        outcomes["Sandbox with a Volume of another environment"] = await _outcome(
            stub.SandboxCreateV2(api_pb2.SandboxCreateV2Request(app_id=own_app_id, definition=definition))
        )
    channel.close()
    outcomes["own function"] = await double.remote.aio(21)
    echo = modal.Function.from_name(deployed_app, "echo")
    outcomes["deployed function"] = await echo.remote.aio("hi")
    return outcomes
