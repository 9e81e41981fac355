"""Writes docs/api.md, the public API's reference, from the protos' own comments: each service
and its RPCs (with the errors each returns), each message and its fields, each enum and its
values. The protos are the one source; this page is never edited by hand:

    .venv/bin/python service/client_dist/actionmesh_client/proto/reference.py

tests/unit/test_api_reference.py fails when docs/api.md differs from what this writes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

PROTO_DIR = Path(__file__).resolve().parent
DIST_ROOT = PROTO_DIR.parent.parent
DOCS = DIST_ROOT.parents[1] / "docs" / "api.md"
PROTO_FILES = ("session.proto", "tensor.proto")
# Field numbers inside descriptor.proto: where a comment's location path points.
MESSAGE, ENUM, SERVICE, FIELD, VALUE, METHOD = 4, 5, 6, 2, 2, 2
SCALARS = {
    getattr(descriptor_pb2.FieldDescriptorProto, name): name.removeprefix("TYPE_").lower()
    for name in descriptor_pb2.FieldDescriptorProto.Type.keys()  # noqa: SIM118 (not a dict)
}
Comments = dict[tuple[int, ...], str]


def descriptors() -> descriptor_pb2.FileDescriptorSet:
    """The public protos compiled with their comments (protoc's source info)."""
    from google.rpc import status_pb2
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).parent / "_proto")
    googleapis = str(Path(status_pb2.__file__).parents[2])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.binpb"
        sources = [f"actionmesh_client/proto/{name}" for name in PROTO_FILES]
        args = ["protoc", f"-I{DIST_ROOT}", f"-I{include}", f"-I{googleapis}"]
        args += ["--include_source_info", f"--descriptor_set_out={out}", *sources]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {sources}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def comments_of(proto: descriptor_pb2.FileDescriptorProto) -> Comments:
    """Each element's comment (leading, then trailing) by its location path, its lines kept."""
    found: Comments = {}
    for location in proto.source_code_info.location:
        text = "\n".join(
            line.strip()
            for part in (location.leading_comments, location.trailing_comments)
            for line in part.strip().splitlines()
        )
        if text:
            found[tuple(location.path)] = text
    return found


def _block(text: str) -> str:
    """A comment as Markdown: its "- " lines a list, which a blank comment line ends."""
    out: list[str] = []
    in_list = False
    for line in text.splitlines():
        if line.startswith("- "):
            if not in_list and out and out[-1]:
                out.append("")
            in_list = True
        elif not line:
            in_list = False
        elif in_list:
            line = "  " + line
        out.append(line)
    return "\n".join(out)


def undocumented(proto: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Every RPC, message, field, enum and enum value (but a zero UNSPECIFIED) with no comment."""
    notes, missing = comments_of(proto), []
    for s, service in enumerate(proto.service):
        missing += [
            f"{service.name}.{m.name}"
            for i, m in enumerate(service.method)
            if (SERVICE, s, METHOD, i) not in notes
        ]
    for e, enum in enumerate(proto.enum_type):
        missing += [enum.name] if (ENUM, e) not in notes else []
        missing += [
            f"{enum.name}.{v.name}"
            for i, v in enumerate(enum.value)
            if v.number and (ENUM, e, VALUE, i) not in notes
        ]
    for i, message in enumerate(proto.message_type):
        missing += [message.name] if (MESSAGE, i) not in notes else []
        missing += [
            f"{message.name}.{f.name}"
            for j, f in enumerate(message.field)
            if (MESSAGE, i, FIELD, j) not in notes
        ]
    return missing


def _type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type_name:
        name = field.type_name.rsplit(".", 1)[-1]
        local = field.type_name.startswith(".actionmesh.v1.")
        shown = f"[{name}](#{name.lower()})" if local else f"`{field.type_name.lstrip('.')}`"
    else:
        shown = f"`{SCALARS[field.type]}`"
    repeated = field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    return f"repeated {shown}" if repeated else shown


def _cell(text: str) -> str:
    return " ".join(text.splitlines()).replace("|", "\\|")


def render_file(proto: descriptor_pb2.FileDescriptorProto) -> list[str]:
    notes = comments_of(proto)
    lines = [f"## {Path(proto.name).name}", ""]
    if intro := notes.get((12,)):  # the comment above `syntax`
        lines += [_block(intro), ""]
    for s, service in enumerate(proto.service):
        lines += [f"### service {service.name}", "", _block(notes.get((SERVICE, s), "")), ""]
        for m, method in enumerate(service.method):
            streams = (
                "stream " if method.client_streaming else "",
                "stream " if method.server_streaming else "",
            )
            signature = f"{method.name}({streams[0]}{method.input_type.rsplit('.', 1)[-1]}) returns ({streams[1]}{method.output_type.rsplit('.', 1)[-1]})"
            lines += [f"#### {method.name}", "", f"`{signature}`", ""]
            lines += [_block(notes.get((SERVICE, s, METHOD, m), "")), ""]
    for e, enum in enumerate(proto.enum_type):
        lines += [f"### {enum.name}", "", _block(notes.get((ENUM, e), "")), ""]
        lines += ["| value | number | meaning |", "|---|---|---|"]
        for v, value in enumerate(enum.value):
            lines.append(
                f"| `{value.name}` | {value.number} | {_cell(notes.get((ENUM, e, VALUE, v), ''))} |"
            )
        lines.append("")
    for i, message in enumerate(proto.message_type):
        lines += [f"### {message.name}", "", _block(notes.get((MESSAGE, i), "")), ""]
        if not message.field:
            continue
        lines += ["| field | number | type | meaning |", "|---|---|---|---|"]
        for f, field in enumerate(message.field):
            oneof = ""
            if field.HasField("oneof_index"):
                oneof = f"(oneof `{message.oneof_decl[field.oneof_index].name}`) "
            meaning = oneof + notes.get((MESSAGE, i, FIELD, f), "")
            lines.append(f"| `{field.name}` | {field.number} | {_type(field)} | {_cell(meaning)} |")
        lines.append("")
    return lines


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    lines = [
        "# actionmesh.v1 API reference",
        "",
        "Generated from the protos' comments by",
        "[reference.py](../service/client_dist/actionmesh_client/proto/reference.py): do not edit.",
        "How to use the API: [client.md](client.md); errors: [client.md#errors](client.md#errors).",
        "",
    ]
    ours = [f for f in files.file if f.name.startswith("actionmesh_client/")]
    for proto in ours:
        lines += render_file(proto)
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def main(argv: list[str]) -> int:
    """reference.py [OUT]: write the reference to OUT (default docs/api.md)."""
    out = Path(argv[0]) if argv else DOCS
    out.write_text(render(descriptors()))
    print(f"API reference written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
