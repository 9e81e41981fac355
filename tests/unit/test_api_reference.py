"""docs/api.md is what the protos' comments say, and they say something of every RPC, message,
field, enum and enum value of the public API."""

from __future__ import annotations

from actionmesh_client.proto import reference


def test_every_rpc_message_field_and_enum_value_is_commented() -> None:
    ours = [f for f in reference.descriptors().file if f.name.startswith("actionmesh_client/")]
    assert [f.name.rsplit("/", 1)[-1] for f in ours] == ["tensor.proto", "session.proto"]
    for proto in ours:
        assert reference.undocumented(proto) == [], f"{proto.name}: add comments to these"


def test_the_checked_in_api_reference_is_what_the_protos_say() -> None:
    written = reference.DOCS.read_text()
    assert written == reference.render(reference.descriptors()), (
        "docs/api.md is stale: run service/client_dist/actionmesh_client/proto/reference.py"
    )
    assert "#### StreamSteps" in written and "`SERVE_MODE_FULL` | 1 |" in written
