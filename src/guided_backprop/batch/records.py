"""The output folder's records: ``index.jsonl`` lines and ``run.json``, as typed values.

``docs/output-folder.md`` is the contract; these dataclasses are its one definition in code. The batch
job builds them and writes ``to_json()``; :mod:`guided_backprop.report` (and anyone else) reads them
back with ``from_json()``, so writer and readers cannot disagree on a key or its spelling
(``tests/test_output_contract.py`` checks a real run against both these records and the document).

They live in ``batch/`` beside the code that writes them: the report already depends on the batch
job's folder layout, and this module imports nothing of the batch job (only the standard library),
so importing it from the report loads no torch code.

Reading, strict (the default): a missing or unknown key, or a value of the wrong type, raises
:class:`RecordError` naming the key. Reading, ``lenient=True`` (for a hand-edited or foreign file that
a reader shows as well as it can): a missing key or a value of the wrong type becomes the empty value
(``None``, ``[]``, ``{}``), unknown keys are ignored. Either way an older spelling is accepted and
mapped (:data:`LEGACY_KEYS`), and never written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

_SURROGATE = re.compile("[\ud800-\udfff]")

Json = dict[str, Any]
Status = Literal["ok", "error"]
NeuronValue = Literal["max"] | tuple[int, int] | None

#: Older spellings a reader accepts, mapped to the key written today (which is never written otherwise):
#: ``layer_target.positions`` (a list of ``[y, x]``) -> ``position`` (its first entry),
#: ``layer_target.scores`` (a list) -> ``score`` (its first entry), and in ``run.json``
#: ``normalisation`` / ``norm`` -> ``normalization``.
LEGACY_KEYS: dict[str, str] = {"positions": "position", "scores": "score", "normalisation": "normalization",
                               "norm": "normalization"}


def json_text(value: Any, *, indent: int | None = None) -> str:
    """JSON that is valid UTF-8 for any file name: readable non-ASCII, lossless for names that are
    not UTF-8.

    A file name that is not valid UTF-8 reaches Python with surrogate escapes (``b"\\xff"`` is
    ``"\\udcff"``); it is written as the JSON escape ``\\udcff``, which ``json.loads`` turns back into
    the same string (``os.fsencode`` then gives the original bytes). Every other character is
    written as itself. A float that is not finite (NaN, infinity) is written as ``null``: JSON has no
    such numbers, and a bare ``NaN`` makes the file unreadable to strict parsers (``JSON.parse``).
    """
    text = json.dumps(finite_json(value), ensure_ascii=False, indent=indent, allow_nan=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def finite_json(value: Any) -> Any:
    """``value`` (dicts, lists, tuples, scalars) with every non-finite float replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


class RecordError(ValueError):
    """A JSON object that is not a record of the output folder contract; the message names the key."""


# ------------------------------------------------------------------------------------------ reading


class _Reader:
    """Typed access to one JSON object's keys: strict (raise naming the key) or lenient (empty value)."""

    def __init__(self, data: Any, where: str, *, lenient: bool, known: tuple[str, ...],
                 optional: tuple[str, ...] = (), legacy: tuple[str, ...] = ()) -> None:
        self.where = where
        self.lenient = lenient
        if not isinstance(data, Mapping):
            if not lenient:
                raise RecordError(f"{where}: a JSON {type(data).__name__}, expected an object")
            data = {}
        self.data: Mapping[str, Any] = data
        if lenient:
            return
        unknown = [k for k in data if k not in known and k not in legacy]
        if unknown:
            raise RecordError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(known)}")
        given = set(data) | {LEGACY_KEYS[old] for old in legacy if old in data}
        missing = [k for k in known if k not in given and k not in optional]
        if missing:
            raise RecordError(f"{where}: missing key {missing[0]!r}")

    def raw(self, key: str, *legacy: str) -> Any:
        """The value under ``key``, or under its first older spelling present (``None``: none)."""
        if key in self.data:
            return self.data[key]
        return next((self.data[old] for old in legacy if old in self.data), None)

    def bad(self, key: str, value: Any, expected: str) -> None:
        """Strict: raise, naming the key; lenient: nothing (the caller uses the empty value)."""
        if not self.lenient:
            raise RecordError(f"{self.where}: key {key!r} is {value!r}, expected {expected}")

    def integer(self, key: str, value: Any = ..., *, null: bool = False) -> Any:
        value = self.raw(key) if value is ... else value
        if (value is None and null) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        self.bad(key, value, "an integer" + (" or null" if null else ""))
        return None

    def number(self, key: str, value: Any = ..., *, null: bool = False) -> Any:
        value = self.raw(key) if value is ... else value
        if value is None and null:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                not self.lenient or math.isfinite(value)):
            return value
        self.bad(key, value, "a number" + (" or null" if null else ""))
        return None

    def text(self, key: str, value: Any = ..., *, null: bool = False) -> Any:
        value = self.raw(key) if value is ... else value
        if (value is None and null) or isinstance(value, str):
            return value
        self.bad(key, value, "a string" + (" or null" if null else ""))
        return None if value is None else str(value)

    def flag(self, key: str) -> Any:
        value = self.raw(key)
        if isinstance(value, bool):
            return value
        self.bad(key, value, "true or false")
        return None

    def texts(self, key: str) -> list[str]:
        value = self.raw(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        self.bad(key, value, "a list of strings")
        return []

    def names(self, key: str) -> dict[str, str]:
        value = self.raw(key)
        if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        self.bad(key, value, "an object of file names")
        return {k: v for k, v in value.items() if isinstance(v, str)} if isinstance(value, Mapping) else {}


def _yx(reader: _Reader, key: str, value: Any) -> tuple[int, int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (value[0], value[1])
    reader.bad(key, value, "[y, x]")
    return None


# ------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class ClassScore:
    """One class with its probability, written as the JSON list ``[class_index, class_name, probability]``.

    ``class_name`` is null where the model has no name for the class. In a leniently read row a
    value of the wrong type is ``None``.
    """

    class_index: int | None
    class_name: str | None
    probability: float | None

    def to_json(self) -> list[Any]:
        return [self.class_index, self.class_name, self.probability]

    @classmethod
    def from_json(cls, data: Any, *, key: str = "class", lenient: bool = False) -> ClassScore:
        """``[class_index, class_name, probability]``; leniently, a longer list gives its first three."""
        if not isinstance(data, list) or not (len(data) == 3 or (lenient and len(data) > 3)):
            raise RecordError(f"key {key!r}: {data!r} is not [class_index, class_name, probability]")
        r = _Reader({}, key, lenient=lenient, known=())
        return cls(r.integer(key, data[0]), r.text(key, data[1], null=True), r.number(key, data[2], null=True))

    @classmethod
    def list_from_json(cls, data: Any, *, key: str, lenient: bool = False) -> list[ClassScore]:
        """A list of them; leniently, the entries that are not lists of three are left out."""
        if not isinstance(data, list):
            if lenient:
                return []
            raise RecordError(f"key {key!r} is {data!r}, expected a list of [class_index, class_name, probability]")
        out = []
        for entry in data:
            try:
                out.append(cls.from_json(entry, key=key, lenient=lenient))
            except RecordError:
                if not lenient:
                    raise
        return out


@dataclass(frozen=True)
class LayerTargetRecord:
    """``layer_target`` of an index line: the layer unit explained (a run with a layer target)."""

    layer: str
    channel: int
    #: ``None``: the channel summed; ``"max"``: its most active unit; ``(y, x)``: that unit.
    neuron: NeuronValue
    #: ``(y, x)`` of the unit explained, or ``None`` (the channel summed).
    position: tuple[int, int] | None
    #: The unit's activation (the channel's sum when summed).
    score: float

    KEYS: ClassVar[tuple[str, ...]] = ("layer", "channel", "neuron", "position", "score")

    def to_json(self) -> Json:
        neuron = list(self.neuron) if isinstance(self.neuron, tuple) else self.neuron
        return {"layer": self.layer, "channel": self.channel, "neuron": neuron,
                "position": None if self.position is None else list(self.position), "score": self.score}

    @classmethod
    def from_json(cls, data: Any) -> LayerTargetRecord:
        """Strict; ``positions``/``scores`` (older spelling, lists of one per unit) give their first entry."""
        r = _Reader(data, "layer_target", lenient=False, known=cls.KEYS, legacy=("positions", "scores"))
        neuron_value = r.raw("neuron")
        neuron: NeuronValue = neuron_value if neuron_value in (None, "max") else _yx(r, "neuron", neuron_value)
        position_value = r.raw("position")
        if "position" not in r.data:
            positions = r.raw("positions")
            position_value = positions[0] if isinstance(positions, list) and positions else None
        position = None if position_value is None else _yx(r, "position", position_value)
        score_value = r.raw("score")
        if "score" not in r.data:
            scores = r.raw("scores")
            score_value = scores[0] if isinstance(scores, list) and scores else None
        return cls(layer=r.text("layer"), channel=r.integer("channel"), neuron=neuron, position=position,
                   score=r.number("score", score_value))


@dataclass(frozen=True)
class IndexRecord:
    """One line of ``index.jsonl``: one input, its prediction, what was explained and the files written."""

    idx: int
    input: str
    status: Status
    error: str | None
    class_index: int | None
    class_name: str | None
    probability: float | None
    top5: list[ClassScore]
    targets: list[ClassScore] | None
    layer_target: LayerTargetRecord | None
    files: dict[str, str]
    #: Only with ``save_raw`` (``None``: the key is not written).
    raw: dict[str, str] | None = None
    #: What each map explains, apart from the prediction (one object per explained target): ``target`` (its
    #: title), ``value`` and ``value_kind`` ("probability" for class logits, else "score": raw, never
    #: softmaxed), ``found`` (False: no matching detection, no map), ``zero_maps`` (methods whose map is
    #: all zeros), and what was explained (``class``, ``box``/``label``/``detection_score``, ``pixels``,
    #: ``similarity``...). ``None``: not written (runs of earlier versions).
    explained: list[dict[str, Any]] | None = None

    KEYS: ClassVar[tuple[str, ...]] = (
        "idx", "input", "status", "error", "class_index", "class_name", "probability", "top5", "targets",
        "layer_target", "files", "raw", "explained")

    @classmethod
    def failed(cls, idx: int, path: str, reason: str, *, save_raw: bool) -> IndexRecord:
        """The line of an input that was not explained."""
        return cls(idx=idx, input=path, status="error", error=reason, class_index=None, class_name=None,
                   probability=None, top5=[], targets=None, layer_target=None, files={},
                   raw={} if save_raw else None, explained=[])

    @property
    def maps(self) -> int:
        """Maps written for this input (its files but the input picture and the panel)."""
        return sum(1 for key in self.files if key not in ("input", "panel"))

    def to_json(self) -> Json:
        out: Json = {
            "idx": self.idx, "input": self.input, "status": self.status, "error": self.error,
            "class_index": self.class_index, "class_name": self.class_name, "probability": self.probability,
            "top5": [c.to_json() for c in self.top5],
            "targets": None if self.targets is None else [c.to_json() for c in self.targets],
            "layer_target": None if self.layer_target is None else self.layer_target.to_json(),
            "files": dict(self.files),
        }
        if self.raw is not None:
            out["raw"] = dict(self.raw)
        if self.explained is not None:
            out["explained"] = [dict(e) for e in self.explained]
        return out

    @classmethod
    def from_json(cls, data: Any, *, lenient: bool = False, idx: int | None = None) -> IndexRecord:
        """Read one line's object. ``lenient``: see the module's docstring; ``idx`` is then the
        index of a line without a valid one (its place in the file), and a status other than ``"ok"``
        is ``"error"``; a ``layer_target`` that is not one is ``None``."""
        r = _Reader(data, "index line", lenient=lenient, known=cls.KEYS, optional=("raw", "explained"))
        status = r.raw("status")
        if status not in ("ok", "error"):
            r.bad("status", status, '"ok" or "error"')
            status = "error"
        layer_target = r.raw("layer_target")
        if layer_target is not None:
            try:
                layer_target = LayerTargetRecord.from_json(layer_target)
            except RecordError:
                if not lenient:
                    raise
                layer_target = None
        targets = r.raw("targets")
        number = r.integer("idx")
        if number is None:
            number = idx if idx is not None else -1
        return cls(
            idx=number,
            input=r.text("input") or "",
            status=status,
            error=r.text("error", null=True),
            class_index=r.integer("class_index", null=True),
            class_name=r.text("class_name", null=True),
            probability=r.number("probability", null=True),
            top5=ClassScore.list_from_json(r.raw("top5"), key="top5", lenient=lenient),
            targets=None if targets is None else ClassScore.list_from_json(targets, key="targets", lenient=lenient),
            layer_target=layer_target,
            files=r.names("files"),
            raw=None if r.raw("raw") is None else r.names("raw"),
            explained=[dict(e) for e in r.raw("explained") if isinstance(e, Mapping)]
            if isinstance(r.raw("explained"), list) else None,
        )


@dataclass(frozen=True)
class RunRecord:
    """``run.json``: the run's settings in words, and its counts once finished."""

    tool: str
    version: str
    model: str
    weights: str | None
    labels: str | None
    preprocessing: str
    input_size: tuple[int, int] | None
    methods: list[str]
    normalization: str
    target: str
    gradcam_layer: str | None
    smooth: int
    noise: float | None
    name: str
    input_name: str
    save_raw: bool
    device: str
    processes: int
    inputs: list[str]
    started: str
    finished: str | None
    #: The counts, written once the run is finished (``None``: not written).
    images: int | None = None
    ok: int | None = None
    failed: int | None = None
    maps: int | None = None
    #: What the model's output is (classifier, segmenter, detector, other) and whether guided backprop and
    #: deconvnet route all of its activations ("yes"; "partly": some, e.g. Hardswish, keep plain gradients).
    output_kind: str | None = None
    guidance: str | None = None
    #: What the run said on its first lines: partial guidance (which activations keep plain gradients),
    #: random weights (empty: nothing to say; absent from older files).
    notes: list[str] = field(default_factory=list)

    KEYS: ClassVar[tuple[str, ...]] = (
        "tool", "version", "model", "weights", "labels", "preprocessing", "input_size", "methods",
        "normalization", "target", "gradcam_layer", "smooth", "noise", "name", "input_name", "save_raw",
        "device", "processes", "inputs", "started", "finished", "images", "ok", "failed", "maps", "output_kind",
        "guidance", "notes")
    OPTIONAL: ClassVar[tuple[str, ...]] = ("output_kind", "guidance")
    COUNTS: ClassVar[tuple[str, ...]] = ("images", "ok", "failed", "maps")

    def to_json(self) -> Json:
        out: Json = {}
        for key in self.KEYS:
            value = getattr(self, key)
            if key in self.COUNTS + self.OPTIONAL and value is None:
                continue
            out[key] = list(value) if isinstance(value, (tuple, list)) else value
        return out

    @classmethod
    def from_json(cls, data: Any) -> RunRecord:
        """Strict (``normalisation``/``norm``, older spellings, give ``normalization``)."""
        r = _Reader(data, "run.json", lenient=False, known=cls.KEYS, optional=cls.COUNTS + cls.OPTIONAL + ("notes",),
                    legacy=("normalisation", "norm"))
        size = r.raw("input_size")
        return cls(
            tool=r.text("tool"), version=r.text("version"), model=r.text("model"),
            weights=r.text("weights", null=True), labels=r.text("labels", null=True),
            preprocessing=r.text("preprocessing"),
            input_size=None if size is None else _yx(r, "input_size", size),
            methods=r.texts("methods"),
            normalization=r.text("normalization", r.raw("normalization", "normalisation", "norm")),
            target=r.text("target"), gradcam_layer=r.text("gradcam_layer", null=True), smooth=r.integer("smooth"),
            noise=r.number("noise", null=True), name=r.text("name"), input_name=r.text("input_name"),
            save_raw=r.flag("save_raw"), device=r.text("device"), processes=r.integer("processes"),
            inputs=r.texts("inputs"), started=r.text("started"), finished=r.text("finished", null=True),
            **{k: r.integer(k, null=True) for k in cls.COUNTS},
            **{k: r.text(k, null=True) for k in cls.OPTIONAL},
            notes=r.texts("notes") if r.raw("notes") is not None else [],
        )
