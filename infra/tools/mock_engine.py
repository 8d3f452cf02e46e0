"""Runs the stack program offline under Pulumi mocks and records every resource it registers.

The tests and `python -m infra.tools.plan` both run `__main__.py` through this module: no cloud, no
Pulumi CLI, no credentials. What only the cloud would compute (account e-mails, the project
number, the cluster's endpoint, a GitLab project's ID, a created runner's token) is answered
with the stand-ins below.
"""

import json
import runpy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.tools.stack_file import PROJECT, REPO

STAND_IN_PROJECT_NUMBER = "123456789012"
STAND_IN_GITLAB_PROJECT_ID = "4242"
# What GitLab would answer for a runner the stack creates: its authentication token.
STAND_IN_RUNNER_TOKEN = "glrt-" + "c" * 24
# GKE's own Service range, which it gives clusters created without one from 1.27 on.
STAND_IN_SERVICES_RANGE = "34.118.224.0/20"
STAND_IN_ENDPOINT = "203.0.113.10"
STAND_IN_CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="


@dataclass(frozen=True)
class Resource:
    """One registration: type token, logical name, inputs (engine camelCase keys), options."""

    type: str
    name: str
    inputs: dict[str, Any]
    urn: str
    parent: str
    depends_on: tuple[str, ...]
    provider: str
    ignore_changes: tuple[str, ...]
    protect: bool
    alias_types: tuple[str, ...] = ()
    """Earlier type tokens this resource answers to (aliases by type)."""
    alias_parents: tuple[str, ...] = ()
    """Parents (URNs) this resource had under an earlier owner (aliases by parent)."""
    replace_on_changes: tuple[str, ...] = ()
    delete_before_replace: bool = False
    retain_on_delete: bool = False
    before_update_hooks: tuple[str, ...] = ()
    """Names of the resource hooks the engine runs before updating it."""


def is_secret(value: Any) -> bool:
    """Whether a recorded input value is marked secret."""
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def reveal(value: Any) -> Any:
    """A recorded input value with every secret marker removed."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def _as_sent(value: Any) -> Any:
    """An input as the engine and the analyzer get it: a value not known yet as Pulumi's
    unknown sentinel (the mocks hand it over as pulumi.output.Unknown)."""
    if isinstance(value, pulumi.output.Unknown):
        return rpc.UNKNOWN
    if isinstance(value, dict):
        return {k: _as_sent(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_sent(v) for v in value]
    return value


def _whole_numbers(value: Any) -> Any:
    """The engine's wire format carries every number as a float; give integers back."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _computed_state(type_: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs the cloud would compute, for the types whose outputs the program reads."""
    if type_ == "gcp:serviceaccount/account:Account":
        email = f"{inputs['accountId']}@{inputs['project']}.iam.gserviceaccount.com"
        return {
            "email": email,
            "member": f"serviceAccount:{email}",
            "name": f"projects/{inputs['project']}/serviceAccounts/{email}",
        }
    if type_ == "gcp:iam/workloadIdentityPool:WorkloadIdentityPool":
        pool = inputs["workloadIdentityPoolId"]
        return {
            "name": f"projects/{STAND_IN_PROJECT_NUMBER}/locations/global/"
            f"workloadIdentityPools/{pool}"
        }
    if type_ == "gcp:iam/workloadIdentityPoolProvider:WorkloadIdentityPoolProvider":
        pool, provider = inputs["workloadIdentityPoolId"], inputs["workloadIdentityPoolProviderId"]
        return {
            "name": f"projects/{STAND_IN_PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
            f"{pool}/providers/{provider}"
        }
    if type_ == "gcp:storage/bucket:Bucket":
        return {"name": inputs.get("name", f"{name}-4f3a2b1")}
    if type_ == "gitlab:index/userRunner:UserRunner":
        return {"token": STAND_IN_RUNNER_TOKEN}
    if type_ == "gcp:container/cluster:Cluster":
        return {
            "endpoint": STAND_IN_ENDPOINT,
            "masterAuth": {"clusterCaCertificate": STAND_IN_CA},
            "ipAllocationPolicy": {"servicesIpv4CidrBlock": STAND_IN_SERVICES_RANGE},
        }
    return {}


def _first_preview_state(type_: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a first `pulumi preview` knows of a resource it would create: its inputs, and
    nothing the cloud computes. A Kubernetes object's cluster does not exist yet, so its
    provider cannot plan it: every output is unknown."""
    if type_.startswith("kubernetes:"):
        return {key: rpc.UNKNOWN for key in inputs}
    computed = _computed_state(type_, name, inputs)
    # An auto-name is chosen by the provider's Check, which a preview runs: known.
    known = {"name"} if type_ == "gcp:storage/bucket:Bucket" else set()
    return {
        **inputs,
        **{key: rpc.UNKNOWN for key in computed.keys() - known},
        **{key: computed[key] for key in computed.keys() & known},
    }


class RecordingMocks(pulumi.runtime.Mocks):
    """Pulumi mocks that answer with the inputs plus what the cloud would compute, or, for a
    first preview, with the inputs and what the cloud would compute left unknown."""

    def __init__(self, first_preview: bool = False) -> None:
        # Registrations run on a thread pool, so inputs are kept by (type, name).
        self.inputs: dict[tuple[str, str], dict[str, Any]] = {}
        self.first_preview = first_preview

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.inputs[(args.typ, args.name)] = _whole_numbers(_as_sent(dict(args.inputs)))
        if self.first_preview:
            return "", _first_preview_state(args.typ, args.name, args.inputs)
        return f"{args.name}-id", {
            **args.inputs,
            **_computed_state(args.typ, args.name, args.inputs),
        }

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        """What a data source the program reads would answer: GitLab's project by its path."""
        if args.token == "gitlab:index/getProject:getProject":
            return {
                "id": STAND_IN_GITLAB_PROJECT_ID,
                "pathWithNamespace": args.args["pathWithNamespace"],
            }
        return {}


class RecordingMonitor(pulumi.runtime.mocks.MockMonitor):
    """A mock resource monitor that keeps every registration with its inputs and options."""

    def __init__(self, mocks: RecordingMocks, stack: str) -> None:
        super().__init__(mocks)
        self.recording_mocks = mocks
        self.stack = stack
        self.registered: list[Resource] = []

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        # The SDK's own make_urn reads the stack from a context variable, which pulumi 3.231
        # (an earlier floor) does not carry into the threads that register resources, giving
        # "urn:pulumi:stack::project::…"; the policy rules read the stack from the URN.
        if parent:
            type_ = parent.split("::")[2].split("$")[-1] + "$" + type_
        return f"urn:pulumi:{self.stack}::{PROJECT}::{type_}::{name}"

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registered.append(
                Resource(
                    type=request.type,
                    name=request.name,
                    inputs=self.recording_mocks.inputs.get((request.type, request.name), {}),
                    urn=response.urn,
                    parent=request.parent,
                    depends_on=tuple(request.dependencies),
                    provider=request.provider,
                    ignore_changes=tuple(request.ignoreChanges),
                    protect=request.protect,
                    alias_types=tuple(a.spec.type for a in request.aliases if a.spec.type),
                    alias_parents=tuple(
                        a.spec.parentUrn for a in request.aliases if a.spec.parentUrn
                    ),
                    replace_on_changes=tuple(request.replaceOnChanges),
                    delete_before_replace=request.deleteBeforeReplace,
                    retain_on_delete=request.retainOnDelete,
                    before_update_hooks=tuple(request.hooks.before_update),
                )
            )
        return response


@dataclass
class Run:
    """One offline run: what was registered, and the error that stopped it, if any."""

    registered: list[Resource]
    error: BaseException | None


def run_mocked(
    program: Callable[[], Any],
    config: Mapping[str, Any],
    secret_keys: Iterable[str],
    stack: str,
    first_preview: bool = False,
) -> Run:
    """Run a Pulumi program under recording mocks with the given config: as `pulumi up`
    would, or as the first `pulumi preview` of a stack that does not exist yet."""
    monitor = RecordingMonitor(RecordingMocks(first_preview), stack)
    runtime_settings.reset_options(project=PROJECT, stack=stack, preview=first_preview)
    pulumi.runtime.set_mocks(
        monitor.recording_mocks,
        project=PROJECT,
        stack=stack,
        preview=first_preview,
        monitor=monitor,
    )
    pulumi.runtime.set_all_config(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
        list(secret_keys),
    )
    try:
        _sync_await(run_pulumi_func(program))
    except Exception as error:
        return Run(monitor.registered, error)
    return Run(monitor.registered, None)


def run_stack(
    config: Mapping[str, Any], secret_keys: Iterable[str], stack: str, first_preview: bool = False
) -> Run:
    """Run the stack program, `__main__.py`, as `pulumi up` (or a first preview) would."""
    return run_mocked(
        lambda: runpy.run_path(str(REPO / "__main__.py"), run_name="__main__"),
        config,
        secret_keys,
        stack,
        first_preview,
    )
