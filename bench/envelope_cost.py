"""What building and serialising one event costs, and what the ideas to cut it would save (not a test).

    PYTHONPATH=. .venv/bin/python bench/envelope_cost.py

For one event of each kind (ADT encounter, DFT charge, CSV charge, 835 claim), timeit per call
(best of 7) of:

* ``validate``: ``validate_python`` of the envelope dict with its ``data`` dict (what
  ``make_event``, ``map_record`` and the 835 emitter do today);
* ``assemble``: the same instances put together in Python without validation
  (``object.__new__`` and ``__dict__``, as ``model_construct`` does; generated straight-line code,
  no check at all: the lower bound of "construct without validation");
* ``assemble, checked``: the same with a type check per field (exact ``str``, finite ``Decimal``,
  ``int`` within bounds, the nested model's class...), what skipping validation safely needs;
* ``to_json``: ``CloudEvent.to_json()`` (pydantic-core);
* ``template``: the same bytes from generated straight-line Python (``%`` formatting,
  ``json.encoder.encode_basestring`` for strings): the "pre-rendered envelope" idea, here
  for the whole event, so the lower bound of doing the serialisation in Python.

Every ``assemble`` and ``template`` result is checked equal to what validation and ``to_json`` give.
The finding (docs/benchmarks.md, section 12): pydantic-core does both steps faster than Python can.
"""

from __future__ import annotations

import io
import os
import sys
import timeit
import tomllib
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
_MISSING = object()


def samples() -> dict[str, BaseModel]:
    """One event of each kind, from the benchmark feeds' makers."""
    from bench.messages import adt, dft
    from bench.x12_835 import ISA, transaction
    from canonical.context import TranslationContext
    from canonical.flat import FlatSpec, translate_flat
    from canonical.translate import translate_hl7
    from canonical.x12.remit835 import translate_835

    ctx = TranslationContext("bench", "live", "raw.bench/1", datetime(2024, 10, 16, tzinfo=UTC))
    spec = FlatSpec.model_validate(tomllib.loads((ROOT / "fixtures/flat/billing_export.toml").read_text("utf-8")))
    row = (ROOT / "fixtures/flat/billing_export.csv").read_bytes().splitlines(keepends=True)[:2]
    (csv_outcome,) = translate_flat(io.BytesIO(b"".join(row)), spec, ctx, unit="u")
    remit = ISA + "GS*HP*A*B*20241015*1200*1*X*005010X221A1~\n" + transaction(1, 1) + "GE*1*1~\nIEA*1*000000001~\n"
    (result,) = translate_835(io.BytesIO(remit.encode()), ctx, source_name="x")
    assert result.events is not None
    claim = next(e for e in result.events if e.type.startswith("org.ficus.claims.claim."))
    return {"ADT encounter": translate_hl7(adt(1), "hl7v2", ctx).events[0],
            "DFT charge": translate_hl7(dft(1), "hl7v2", ctx).events[0],
            "CSV charge": csv_outcome.events[0], "835 claim": claim}


def _bare(annotation: Any) -> tuple[Any, list[Any]]:
    found: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            found.extend(getattr(item, "metadata", [item]))
    return annotation, found


def _optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(args) == 1, annotation
        return args[0], True
    return annotation, False


def _check(annotation: Any, metadata: list[Any], v: str, env: dict[str, Any]) -> str:
    """An expression true when ``v`` is a value validation would return unchanged."""
    annotation, more = _bare(annotation)
    inner, optional = _optional(annotation)
    inner, even_more = _bare(inner)
    limits = metadata + more + even_more
    if inner is Decimal:
        test = f"{v}.__class__ is _Decimal and {v}.is_finite()"
    elif inner is int:
        test = f"{v}.__class__ is int" + "".join(f" and {v} >= {c.ge}" for c in limits if hasattr(c, "ge"))
    elif inner in (str, bool):
        test = f"{v}.__class__ is {inner.__name__}"
    elif typing.get_origin(inner) is Literal:
        test = f"{v}.__class__ is str and {v} in {typing.get_args(inner)!r}"
    elif typing.get_origin(inner) is list:
        test = f"{v}.__class__ is list and all(x.__class__ is str for x in {v})"
    elif isinstance(inner, type) and issubclass(inner, BaseModel):
        env[f"_C{len(env)}"] = inner
        test = f"{v}.__class__ is _C{len(env) - 1}"
    else:
        test = f"{v} is None"  # extensions: only the absent case
    return f"({v} is None or {test})" if optional else f"({test})"


def assembler(cls: type[BaseModel], checked: bool) -> Callable[[dict[str, Any]], Any]:
    """Generated: ``cls`` from a dict as validation would build it (None when a check fails)."""
    env: dict[str, Any] = {"_Decimal": Decimal, "_M": _MISSING, "_cls": cls, "_new": object.__new__,
                           "_set": object.__setattr__}
    lines, names = ["def build(d):", "    get = d.get"], []
    for i, (name, info) in enumerate(cls.model_fields.items()):
        names.append(f"{name!r}: v{i}")
        if info.default_factory is not None:
            lines += [f"    v{i} = get({name!r}, _M)", f"    if v{i} is _M:", f"        v{i} = []"]
        elif info.default is PydanticUndefined:
            lines.append(f"    v{i} = get({name!r}, _M)")
        else:
            env[f"_D{i}"] = info.default
            lines.append(f"    v{i} = get({name!r}, _D{i})")
        if checked:
            test = _check(info.annotation, list(info.metadata), f"v{i}", env)
            lines += [f"    if not {test}:", "        return None"]
    lines += ["    obj = _new(_cls)", "    _set(obj, '__dict__', {" + ", ".join(names) + "})",
              "    _set(obj, '__pydantic_fields_set__', set(d))", "    _set(obj, '__pydantic_extra__', None)",
              "    _set(obj, '__pydantic_private__', None)", "    return obj"]
    exec("\n".join(lines), env)  # generated from the model's own fields
    built: Callable[[dict[str, Any]], Any] = env["build"]
    return built


def _json_of(annotation: Any, expr: str, env: dict[str, Any]) -> str:
    """An expression giving the JSON text of ``expr`` (a field value of type ``annotation``)."""
    inner, optional = _optional(_bare(annotation)[0])
    inner = _bare(inner)[0]
    if inner is Decimal:
        text = f"'\"%s\"' % {expr}"
    elif inner is int:
        text = f"str({expr})"
    elif inner is bool:
        text = f"('true' if {expr} else 'false')"
    elif typing.get_origin(inner) is list:
        text = f"'[' + ','.join(_enc(x) for x in {expr}) + ']'"
    elif isinstance(inner, type) and issubclass(inner, BaseModel):
        env[f"_S{len(env)}"] = serialiser(inner)
        text = f"_S{len(env) - 1}({expr})"
    else:
        text = f"_enc({expr})"
    return f"('null' if {expr} is None else {text})" if optional else text


def serialiser(cls: type[BaseModel]) -> Callable[[Any], str]:
    """Generated: the compact JSON text of a ``cls`` instance (fields excluded when None: left out)."""
    env: dict[str, Any] = {"_enc": encode_basestring}
    fields = [(n, i) for n, i in cls.model_fields.items() if n not in ("traceparent", "extensions")]
    fmt = "{" + ",".join(f'"{n}":%s' for n, _ in fields) + "}"
    values = ", ".join(_json_of(info.annotation, f"o.{name}", env) for name, info in fields)
    env["_FMT"] = fmt.replace("%s", "\x00").replace("%", "%%").replace("\x00", "%s")
    exec(f"def ser(o):\n    return _FMT % ({values},)", env)  # generated from the model's own fields
    built: Callable[[Any], str] = env["ser"]
    return built


def best_us(fn: Callable[[], object], number: int = 20_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def measure() -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for label, event in samples().items():
        cls, data_cls = type(event), type(event.data)  # type: ignore[attr-defined]
        data = {n: getattr(event.data, n) for n in event.data.__pydantic_fields_set__}  # type: ignore[attr-defined]
        envelope = {n: getattr(event, n) for n in event.__pydantic_fields_set__ if n != "data"}
        validate = cls.__pydantic_validator__.validate_python
        plain = (assembler(data_cls, False), assembler(cls, False))
        checked = (assembler(data_cls, True), assembler(cls, True))

        def assemble(pair: tuple[Callable[[dict[str, Any]], Any], ...] = plain, envelope: dict[str, Any] = envelope,
                     data: dict[str, Any] = data) -> Any:
            return pair[1]({**envelope, "data": pair[0](data)})

        template = serialiser(cls)
        assert validate({**envelope, "data": data}) == event
        assert assemble(plain) == event and assemble(checked) == event, label
        assert template(event).encode() == event.to_json(), label  # type: ignore[attr-defined]
        out[label] = {
            "validate": best_us(lambda: validate({**envelope, "data": data})),  # noqa: B023
            "assemble": best_us(assemble),
            "assemble, checked": best_us(lambda: assemble(checked)),  # noqa: B023
            "to_json": best_us(event.to_json),  # type: ignore[attr-defined]
            "template": best_us(lambda: template(event).encode()),  # noqa: B023
        }
    return out


def main() -> None:
    result = measure()
    load = os.getloadavg()
    print(f"us per event, best of 7; Python {sys.version.split()[0]}; load average {load[0]:.2f} at the end")
    columns = list(next(iter(result.values())))
    print(f"{'event':<14}" + "".join(f"{c:>19}" for c in columns))
    for label, row in result.items():
        print(f"{label:<14}" + "".join(f"{row[c]:>19.2f}" for c in columns))


if __name__ == "__main__":
    main()
