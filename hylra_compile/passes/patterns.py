"""The vocabulary the attention matcher is written in: each op attention is made of, under every spelling a
traced model can use, read back as one canonical call with named arguments.

A Dynamo graph spells ``q @ k.transpose(-1, -2)`` as ``operator.matmul``, ``torch.matmul``, ``torch.bmm`` or the
methods ``.matmul`` / ``.bmm``, and Kᵀ as ``transpose`` / ``swapaxes`` / ``permute`` / ``.mT``, with positional or
keyword arguments. :func:`call_args` normalises a call with torch's own ``normalize_function`` (the op's schema),
so the matcher reads ``args["input"]`` whatever the spelling.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx
from torch.fx.operator_schemas import normalize_function


class NoMatch(Exception):
    """The structure is attention but not one the ops can take; the message is the reason shown in the report."""


@dataclasses.dataclass(frozen=True)
class Spelling:
    """One canonical op: the functions and method names that spell it, the function whose schema names the
    arguments, and renames from that schema's names to the canonical ones."""

    functions: tuple = ()
    methods: tuple[str, ...] = ()
    schema: object = None  # normalise against this function's schema; None: the call's own target
    renames: tuple[tuple[str, str], ...] = ()


SPELLINGS = {
    "sdpa": Spelling(functions=(torch._C._nn.scaled_dot_product_attention,
                                torch.nn.functional.scaled_dot_product_attention)),
    "matmul": Spelling(functions=(torch.matmul, operator.matmul, torch.bmm, torch.Tensor.matmul),
                       methods=("matmul", "bmm", "__matmul__"), schema=torch.matmul, renames=(("mat2", "other"),)),
    "softmax": Spelling(functions=(torch.nn.functional.softmax, torch.softmax, torch.Tensor.softmax),
                        methods=("softmax",)),
    "transpose": Spelling(functions=(torch.transpose, torch.swapaxes, torch.swapdims),
                          methods=("transpose", "swapaxes", "swapdims"), schema=torch.transpose,
                          renames=(("axis0", "dim0"), ("axis1", "dim1"))),
    "permute": Spelling(functions=(torch.permute,), methods=("permute",), schema=torch.permute),
    "dropout": Spelling(functions=(torch.nn.functional.dropout,)),
    # Only named in reasons: attention variants the ops do not compute (sinks, softcapping).
    "cat": Spelling(functions=(torch.cat, torch.concat, torch.concatenate), methods=()),
    "tanh": Spelling(functions=(torch.tanh, torch.nn.functional.tanh), methods=("tanh",)),
}


def is_call(node, op: str) -> bool:
    """Whether ``node`` calls canonical ``op`` under any of its spellings."""
    if not isinstance(node, torch.fx.Node):
        return False
    spelling = SPELLINGS[op]
    if node.op == "call_function":
        return node.target in spelling.functions
    return node.op == "call_method" and node.target in spelling.methods


def call_args(node: torch.fx.Node, op: str) -> dict:
    """The arguments of a call of ``op`` by canonical name, defaults filled in. Raises :class:`NoMatch` when the
    call cannot be read against the op's schema."""
    spelling = SPELLINGS[op]
    args = tuple(node.args)
    if node.op == "call_method":
        schema = spelling.schema or getattr(torch, node.target)
        if op == "permute" and len(args) > 1 and not isinstance(args[1], (tuple, list)):
            args = (args[0], args[1:])  # x.permute(0, 1, 3, 2): varargs dims
    else:
        schema = spelling.schema or node.target
    normalized = None
    try:
        normalized = normalize_function(schema, args, dict(node.kwargs), normalize_to_only_use_kwargs=True)
    except RuntimeError:
        # torch < 2.13 still lists the named-tensor (Dimname) overloads, so transpose(x, 1, 2) or softmax(x, -1)
        # binds two schemas: name the argument types so that the int one is picked.
        try:
            normalized = normalize_function(schema, args, dict(node.kwargs),
                                            arg_types=tuple(_argument_type(a) for a in args),
                                            kwarg_types={k: _argument_type(v) for k, v in node.kwargs.items()},
                                            normalize_to_only_use_kwargs=True)
        except (RuntimeError, TypeError):
            pass
    except TypeError:
        pass
    if normalized is None:
        raise NoMatch(f"cannot read the arguments of {describe(node)} against the schema of {op}")
    named = dict(normalized.kwargs)
    for old, new in spelling.renames:
        if old in named:
            named[new] = named.pop(old)
    return named


def _argument_type(value):
    """The type ``normalize_function`` matches against a schema's annotation: a node is the tensor (or SymInt /
    SymFloat) it stands for, a sequence of ints a ``list[int]``."""
    if isinstance(value, torch.fx.Node):
        value = example_value(value)
        if isinstance(value, (int, torch.SymInt)):
            return int
        return float if isinstance(value, (float, torch.SymFloat)) else torch.Tensor
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return list[int]
    return type(value)


def example_value(node):
    """The example value Dynamo recorded for a node (a FakeTensor), or None."""
    if not isinstance(node, torch.fx.Node):
        return None
    return node.meta.get("example_value", node.meta.get("val"))


def describe(node: torch.fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{target} ({node.name})"


def single_user(node: torch.fx.Node, what: str) -> torch.fx.Node:
    users = list(node.users)
    if len(users) != 1:
        raise NoMatch(f"{what} ({node.name}) is used {len(users)} times; attention internals must not escape")
    return users[0]


def constant(value, name: str, types: tuple[type, ...]):
    """``value`` when it is a compile-time constant of one of ``types``; else :class:`NoMatch`."""
    if isinstance(value, torch.fx.Node) or not isinstance(value, types):
        raise NoMatch(f"{name}={value!r} is not a compile-time constant of type {'/'.join(t.__name__ for t in types)}")
    return value


# ``x.mT`` as Dynamo records it from torch 2.14 (before: ``getattr(x, "mT")``).
MT_OPS = (torch.ops.aten.mT, torch.ops.aten.mT.default)


def transposed_source(node) -> torch.fx.Node | None:
    """``x`` when ``node`` is a 4-d ``x`` with its last two dims swapped (``transpose(-1, -2)``, ``swapaxes``,
    ``permute(0, 1, 3, 2)`` or ``.mT``), else None."""
    if not isinstance(node, torch.fx.Node):
        return None
    if node.op == "call_function" and (node.target is getattr and node.args[1:] == ("mT",) or node.target in MT_OPS):
        return node.args[0]
    source = example_value(node.args[0]) if node.args else None
    if source is None or source.dim() != 4:
        return None
    if is_call(node, "transpose"):
        args = call_args(node, "transpose")
        dims = (args["dim0"], args["dim1"])
        if all(isinstance(d, int) for d in dims) and {d % 4 for d in dims} == {2, 3}:
            return args["input"]
    if is_call(node, "permute"):
        args = call_args(node, "permute")
        if all(isinstance(d, int) for d in args["dims"]) and [d % 4 for d in args["dims"]] == [0, 1, 3, 2]:
            return args["input"]
    return None
