"""The output contract: the files other programs read, as typed records with writers and readers.

``index.jsonl`` lines (:class:`IndexRecord`) and ``run.json`` (:class:`RunRecord`) of a batch run
(``docs/output-folder.md``), and ``evaluation.json`` (:class:`EvaluationRecord`) of ``guided-backprop
evaluate`` (``docs/evaluation.md``). These dataclasses are the one definition in code: the writers build
them and write ``to_json()``; :mod:`guided_backprop.report` (and anyone else) reads them back with
``from_json()``, so writer and readers cannot disagree on a key or its spelling (one spelling per key;
``tests/test_output_contract.py`` checks real runs against these records and the documents). This module
imports only the standard library, so a reader loads no torch code.

Reading, strict (the default): a missing or unknown key, or a value of the wrong type, raises
:class:`RecordError` naming the key. Reading, ``lenient=True`` (for a hand-edited or foreign file that
a reader shows as well as it can): a missing key or a value of the wrong type becomes the empty value
(``None``, ``[]``, ``{}``), unknown keys are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

_SURROGATE = re.compile("[\ud800-\udfff]")

Json = dict[str, Any]
Status = Literal["ok", "error"]
NeuronValue = Literal["max"] | tuple[int, int] | None

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
                 optional: tuple[str, ...] = ()) -> None:
        self.where = where
        self.lenient = lenient
        if not isinstance(data, Mapping):
            if not lenient:
                raise RecordError(f"{where}: a JSON {type(data).__name__}, expected an object")
            data = {}
        self.data: Mapping[str, Any] = data
        if lenient:
            return
        unknown = [k for k in data if k not in known]
        if unknown:
            raise RecordError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(known)}")
        missing = [k for k in known if k not in data and k not in optional]
        if missing:
            raise RecordError(f"{where}: missing key {missing[0]!r}")

    def raw(self, key: str) -> Any:
        """The value under ``key`` (``None``: none)."""
        return self.data.get(key)

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
        """Strict."""
        r = _Reader(data, "layer_target", lenient=False, known=cls.KEYS)
        neuron_value = r.raw("neuron")
        neuron: NeuronValue = neuron_value if neuron_value in (None, "max") else _yx(r, "neuron", neuron_value)
        position_value = r.raw("position")
        position = None if position_value is None else _yx(r, "position", position_value)
        return cls(layer=r.text("layer"), channel=r.integer("channel"), neuron=neuron, position=position,
                   score=r.number("score"))


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
    notes: list[str] = dataclasses.field(default_factory=list)

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
        """Strict."""
        r = _Reader(data, "run.json", lenient=False, known=cls.KEYS, optional=cls.COUNTS + cls.OPTIONAL + ("notes",))
        size = r.raw("input_size")
        return cls(
            tool=r.text("tool"), version=r.text("version"), model=r.text("model"),
            weights=r.text("weights", null=True), labels=r.text("labels", null=True),
            preprocessing=r.text("preprocessing"),
            input_size=None if size is None else _yx(r, "input_size", size),
            methods=r.texts("methods"),
            normalization=r.text("normalization"),
            target=r.text("target"), gradcam_layer=r.text("gradcam_layer", null=True), smooth=r.integer("smooth"),
            noise=r.number("noise", null=True), name=r.text("name"), input_name=r.text("input_name"),
            save_raw=r.flag("save_raw"), device=r.text("device"), processes=r.integer("processes"),
            inputs=r.texts("inputs"), started=r.text("started"), finished=r.text("finished", null=True),
            **{k: r.integer(k, null=True) for k in cls.COUNTS},
            **{k: r.text(k, null=True) for k in cls.OPTIONAL},
            notes=r.texts("notes") if r.raw("notes") is not None else [],
        )


# ------------------------------------------------------------------------------------ evaluation.json


#: The checks of ``guided-backprop evaluate``, in the order ``evaluation.json`` writes them.
EVALUATION_CHECKS: tuple[str, ...] = ("randomization", "efficient_mprt", "smooth_mprt", "class_sensitivity",
                                      "deletion", "insertion")


class _Doc:
    """Reading ``evaluation.json``'s nested objects, each named by its dotted path (``deletion.random.auc``).

    Strict: a missing or unknown key, or a value of the wrong type, raises :class:`RecordError` naming the
    path. Lenient: a missing key is the empty value, a value of the wrong type too, and its path is
    added to :attr:`odd` (for the reader to say which parts it left out).
    """

    def __init__(self, *, lenient: bool) -> None:
        self.lenient = lenient
        self.odd: list[str] = []

    def bad(self, where: str, value: Any, expected: str) -> None:
        if not self.lenient:
            raise RecordError(f"{_in_evaluation(where)} is {value!r}, expected {expected}")
        self.odd.append(where)

    def obj(self, value: Any, where: str, keys: tuple[str, ...] = (), optional: tuple[str, ...] = ()
            ) -> Mapping[str, Any]:
        """``value`` as an object with the given keys (any keys: none given)."""
        if value is None and self.lenient:
            return {}
        if not isinstance(value, Mapping):
            self.bad(where, value, "an object")
            return {}
        if keys and not self.lenient:
            unknown = [k for k in value if k not in keys]
            if unknown:
                raise RecordError(f"{_in_evaluation(where)}: unknown key {unknown[0]!r}; the keys are "
                                  f"{', '.join(keys)}")
            missing = [k for k in keys if k not in value and k not in optional]
            if missing:
                raise RecordError(f"{_in_evaluation(where)}: missing key {missing[0]!r}")
        return value

    def number(self, value: Any, where: str) -> float | None:
        """A number or null (a missing one, when lenient)."""
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return value
        self.bad(where, value, "a number or null")
        return None

    def integer(self, value: Any, where: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if value is not None or not self.lenient:
            self.bad(where, value, "an integer")
        return None

    def text(self, value: Any, where: str) -> str | None:
        if isinstance(value, str):
            return value
        if value is not None or not self.lenient:
            self.bad(where, value, "a string")
        return None

    def items(self, value: Any, where: str) -> list[Any]:
        if isinstance(value, list):
            return value
        if value is not None or not self.lenient:
            self.bad(where, value, "a list")
        return []

    def numbers(self, value: Any, where: str) -> list[float | None]:
        return [self.number(v, f"{where}[{i}]") for i, v in enumerate(self.items(value, where))]

    def integers(self, value: Any, where: str) -> list[int]:
        out = [self.integer(v, f"{where}[{i}]") for i, v in enumerate(self.items(value, where))]
        return [v for v in out if v is not None]

    def texts(self, value: Any, where: str) -> list[str]:
        out = [self.text(v, f"{where}[{i}]") for i, v in enumerate(self.items(value, where))]
        return [v for v in out if v is not None]

    def names(self, value: Any, where: str) -> dict[str, str]:
        """An object of strings (file names, reasons); entries of the wrong type are left out, when lenient."""
        out = {k: self.text(v, f"{where}.{k}") for k, v in self.obj(value, where).items()}
        return {k: v for k, v in out.items() if v is not None}

    def per_method(self, value: Any, where: str, read: Any) -> dict[str, Any]:
        """``{"<method>": read(entry, where.method)}``; an entry of the wrong type reads as an empty one."""
        return {m: read(self, entry, f"{where}.{m}") for m, entry in self.obj(value, where).items()}

    def per_metric(self, read: Any) -> Any:
        """A reader of ``{"<metric>": read(...)}`` for :meth:`per_method`."""
        def metrics(doc: _Doc, value: Any, where: str) -> dict[str, Any]:
            return {k: read(doc, v, f"{where}.{k}") for k, v in doc.obj(value, where).items()}
        return metrics


def _in_evaluation(where: str) -> str:
    return where if where == "evaluation.json" else f"evaluation.json: {where}"


@dataclass(frozen=True)
class Stat:
    """``{"mean", "std", "n"}``: one value over images, ``n`` the images where it is defined (``null``:
    undefined everywhere; ``n`` is ``None`` only in a leniently read file)."""

    mean: float | None
    std: float | None
    n: int | None

    def to_json(self) -> Json:
        return {"mean": self.mean, "std": self.std, "n": self.n}

    @classmethod
    def read(cls, doc: _Doc, value: Any, where: str) -> Stat:
        d = doc.obj(value, where, ("mean", "std", "n"))
        return cls(doc.number(d.get("mean"), f"{where}.mean"), doc.number(d.get("std"), f"{where}.std"),
                   doc.integer(d.get("n"), f"{where}.n"))


@dataclass(frozen=True)
class StepStats:
    """``{"mean": [...], "std": [...], "n": [...]}``: :class:`Stat` per step (of a randomisation, of a curve)."""

    mean: list[float | None]
    std: list[float | None]
    n: list[int]

    @property
    def last(self) -> float | None:
        """The last step's mean (``None``: none, or undefined)."""
        return self.mean[-1] if self.mean else None

    def to_json(self) -> Json:
        return {"mean": list(self.mean), "std": list(self.std), "n": list(self.n)}

    @classmethod
    def read(cls, doc: _Doc, value: Any, where: str) -> StepStats:
        d = doc.obj(value, where, ("mean", "std", "n"))
        return cls(doc.numbers(d.get("mean"), f"{where}.mean"), doc.numbers(d.get("std"), f"{where}.std"),
                   doc.integers(d.get("n"), f"{where}.n"))


@dataclass(frozen=True)
class RandomizationRecord:
    """``randomization`` and ``smooth_mprt``: similarity to the trained model's maps along the steps,
    ``methods[method][metric]``; ``constant_maps[method]``: per step, the images whose map became
    constant; ``smoothgrad`` (Smooth MPRT only): ``{"samples", "noise"}``."""

    order: str
    granularity: str
    steps: list[str]
    methods: dict[str, dict[str, StepStats]]
    constant_maps: dict[str, list[int]]
    smoothgrad: dict[str, float] | None = None

    KEYS: ClassVar[tuple[str, ...]] = ("order", "granularity", "steps", "methods", "constant_maps", "smoothgrad")

    def value(self, method: str, metric: str) -> float | None:
        """The mean the summary table shows: after the last step."""
        stats = self.methods.get(method, {}).get(metric)
        return stats.last if stats is not None else None

    def to_json(self) -> Json:
        out: Json = {"order": self.order, "granularity": self.granularity, "steps": list(self.steps),
                     "methods": {m: {k: s.to_json() for k, s in per.items()} for m, per in self.methods.items()},
                     "constant_maps": {m: list(c) for m, c in self.constant_maps.items()}}
        if self.smoothgrad is not None:
            out["smoothgrad"] = dict(self.smoothgrad)
        return out

    @classmethod
    def read(cls, doc: _Doc, value: Any, where: str) -> RandomizationRecord:
        d = doc.obj(value, where, cls.KEYS, optional=("smoothgrad",))
        smooth = d.get("smoothgrad")
        return cls(
            order=doc.text(d.get("order"), f"{where}.order") or "",
            granularity=doc.text(d.get("granularity"), f"{where}.granularity") or "",
            steps=doc.texts(d.get("steps"), f"{where}.steps"),
            methods=doc.per_method(d.get("methods"), f"{where}.methods", doc.per_metric(StepStats.read)),
            constant_maps={m: doc.integers(c, f"{where}.constant_maps.{m}")
                           for m, c in doc.obj(d.get("constant_maps"), f"{where}.constant_maps").items()},
            smoothgrad=None if smooth is None else {
                k: v for k, v in ((k, doc.number(v, f"{where}.smoothgrad.{k}"))
                                  for k, v in doc.obj(smooth, f"{where}.smoothgrad").items()) if v is not None},
        )


@dataclass(frozen=True)
class ClassSensitivityRecord:
    """``class_sensitivity``: each image's map for its predicted class against its map for a random
    other class (``methods[method][metric]``) and for the second-ranked class (``second_ranked``);
    ``classes``: ``{"predicted", "random", "second"}``, one class per image, and ``"explained"`` when a
    class index other than the predicted one was the target (then "second" is the highest-ranked other)."""

    against: str
    methods: dict[str, dict[str, Stat]]
    second_ranked: dict[str, dict[str, Stat]]
    classes: dict[str, list[int]]

    KEYS: ClassVar[tuple[str, ...]] = ("against", "methods", "second_ranked", "classes")

    def value(self, method: str, metric: str) -> float | None:
        """The mean the summary table shows: against the random class."""
        stat = self.methods.get(method, {}).get(metric)
        return stat.mean if stat is not None else None

    def to_json(self) -> Json:
        def block(per_method: dict[str, dict[str, Stat]]) -> Json:
            return {m: {k: s.to_json() for k, s in per.items()} for m, per in per_method.items()}

        return {"against": self.against, "methods": block(self.methods),
                "second_ranked": {"methods": block(self.second_ranked)},
                "classes": {k: list(v) for k, v in self.classes.items()}}

    @classmethod
    def read(cls, doc: _Doc, value: Any, where: str) -> ClassSensitivityRecord:
        d = doc.obj(value, where, cls.KEYS)
        second = doc.obj(d.get("second_ranked"), f"{where}.second_ranked", ("methods",))
        return cls(
            against=doc.text(d.get("against"), f"{where}.against") or "",
            methods=doc.per_method(d.get("methods"), f"{where}.methods", doc.per_metric(Stat.read)),
            second_ranked=doc.per_method(second.get("methods"), f"{where}.second_ranked.methods",
                                         doc.per_metric(Stat.read)),
            classes={k: doc.integers(v, f"{where}.classes.{k}")
                     for k, v in doc.obj(d.get("classes"), f"{where}.classes").items()},
        )


@dataclass(frozen=True)
class CurveStats:
    """One method's (or the random order's) deletion or insertion curve: its area and the mean curve."""

    auc: Stat
    curve: StepStats

    def to_json(self) -> Json:
        return {"auc": self.auc.to_json(), "curve": self.curve.to_json()}

    @classmethod
    def read(cls, doc: _Doc, value: Any, where: str) -> CurveStats:
        d = doc.obj(value, where, ("auc", "curve"))
        return cls(Stat.read(doc, d.get("auc"), f"{where}.auc"), StepStats.read(doc, d.get("curve"), f"{where}.curve"))


@dataclass(frozen=True)
class CurveRecord:
    """``deletion`` or ``insertion``: per method and for a random pixel order, at ``fractions`` (0 to 1)."""

    methods: dict[str, CurveStats]
    random: CurveStats
    fractions: list[float | None]
    #: What the curves follow: a class's softmax ``"probability"`` or an output target's raw ``"score"``.
    follows: str = "probability"

    KEYS: ClassVar[tuple[str, ...]] = ("methods", "random", "fractions", "follows")

    def value(self, method: str, metric: str = "auc") -> float | None:
        """The mean area under the method's curves (the summary table's value)."""
        stats = self.methods.get(method)
        return stats.auc.mean if stats is not None else None

    def to_json(self) -> Json:
        return {"methods": {m: s.to_json() for m, s in self.methods.items()}, "random": self.random.to_json(),
                "fractions": list(self.fractions), "follows": self.follows}

    @classmethod
    def read(cls, doc: _Doc, value: Any, where: str) -> CurveRecord:
        d = doc.obj(value, where, cls.KEYS)
        return cls(methods=doc.per_method(d.get("methods"), f"{where}.methods", CurveStats.read),
                   random=CurveStats.read(doc, d.get("random"), f"{where}.random"),
                   fractions=doc.numbers(d.get("fractions"), f"{where}.fractions"),
                   follows=doc.text(d.get("follows"), f"{where}.follows") or "probability")


@dataclass(frozen=True)
class ComplexityRecord:
    """``efficient_mprt``: per method, ``complexity_rise`` / ``complexity_trained`` /
    ``complexity_randomized``, with the histogram's ``bins`` and the blocks re-initialised."""

    methods: dict[str, dict[str, Stat]]
    bins: int
    granularity: str
    randomized_blocks: int

    KEYS: ClassVar[tuple[str, ...]] = ("methods", "bins", "granularity", "randomized_blocks")

    def value(self, method: str, metric: str) -> float | None:
        stat = self.methods.get(method, {}).get(metric)
        return stat.mean if stat is not None else None

    def to_json(self) -> Json:
        return {"methods": {m: {k: s.to_json() for k, s in per.items()} for m, per in self.methods.items()},
                "bins": self.bins, "granularity": self.granularity, "randomized_blocks": self.randomized_blocks}

    @classmethod
    def read(cls, doc: _Doc, value: Any, where: str) -> ComplexityRecord:
        d = doc.obj(value, where, cls.KEYS)
        return cls(methods=doc.per_method(d.get("methods"), f"{where}.methods", doc.per_metric(Stat.read)),
                   bins=doc.integer(d.get("bins"), f"{where}.bins") or 0,
                   granularity=doc.text(d.get("granularity"), f"{where}.granularity") or "",
                   randomized_blocks=doc.integer(d.get("randomized_blocks"), f"{where}.randomized_blocks") or 0)


CheckRecord = RandomizationRecord | ClassSensitivityRecord | CurveRecord | ComplexityRecord
_CHECK_READERS: dict[str, Any] = {"randomization": RandomizationRecord.read, "smooth_mprt": RandomizationRecord.read,
                                  "efficient_mprt": ComplexityRecord.read,
                                  "class_sensitivity": ClassSensitivityRecord.read, "deletion": CurveRecord.read,
                                  "insertion": CurveRecord.read}


@dataclass(frozen=True)
class EvaluationSettings:
    """``evaluation.json``'s ``settings``: how the evaluation ran, in words (shown by the report and the docs).

    ``target`` is what the checks explained when given (``--target``); an output target (a region, a box...)
    comes with its ``score_threshold`` and no ``class_labels`` (the checks followed a score, not classes)."""

    methods: list[str]
    checks: list[str]
    weights: str | None
    preprocessing: str | None
    deletion_steps: int | None
    figure_image: str | None
    figure_steps: int | None
    batch_size: int | None
    target: str | None = None
    score_threshold: float | None = None
    class_labels: dict[str, str] | None = None

    KEYS: ClassVar[tuple[str, ...]] = ("methods", "checks", "weights", "preprocessing", "deletion_steps",
                                       "figure_image", "figure_steps", "batch_size", "target", "score_threshold",
                                       "class_labels")
    OPTIONAL: ClassVar[tuple[str, ...]] = ("target", "score_threshold", "class_labels")

    def to_json(self) -> Json:
        out: Json = {"methods": list(self.methods), "checks": list(self.checks), "weights": self.weights,
                     "preprocessing": self.preprocessing, "deletion_steps": self.deletion_steps,
                     "figure_image": self.figure_image, "figure_steps": self.figure_steps,
                     "batch_size": self.batch_size}
        if self.score_threshold is not None:  # an output target
            out.update(target=self.target, score_threshold=self.score_threshold)
        else:
            if self.class_labels is not None:
                out["class_labels"] = dict(self.class_labels)
            if self.target is not None:
                out["target"] = self.target
        return out

    @classmethod
    def read(cls, doc: _Doc, value: Any, where: str) -> EvaluationSettings:
        d = doc.obj(value, where, cls.KEYS, optional=cls.OPTIONAL)
        return cls(
            methods=doc.texts(d.get("methods"), f"{where}.methods"),
            checks=doc.texts(d.get("checks"), f"{where}.checks"),
            weights=doc.text(d["weights"], f"{where}.weights") if d.get("weights") is not None else None,
            preprocessing=doc.text(d.get("preprocessing"), f"{where}.preprocessing"),
            deletion_steps=doc.integer(d.get("deletion_steps"), f"{where}.deletion_steps"),
            figure_image=doc.text(d.get("figure_image"), f"{where}.figure_image"),
            figure_steps=doc.integer(d.get("figure_steps"), f"{where}.figure_steps"),
            batch_size=doc.integer(d.get("batch_size"), f"{where}.batch_size"),
            target=doc.text(d["target"], f"{where}.target") if "target" in d else None,
            score_threshold=doc.number(d["score_threshold"], f"{where}.score_threshold")
            if "score_threshold" in d else None,
            class_labels=doc.names(d["class_labels"], f"{where}.class_labels") if "class_labels" in d else None,
        )


@dataclass(frozen=True)
class EvaluationRecord:
    """``evaluation.json`` (``docs/evaluation.md``): what ``guided-backprop evaluate`` found, summarised
    over images. ``images`` counts ``inputs``; checks not run are ``None`` (absent from the file);
    ``failed``: unreadable or not finite inputs and why; ``passed_over``: inputs never opened and why;
    ``figures``: the pictures written with it, by figure name."""

    model: str | None
    images: int | None
    seed: int | None
    inputs: list[str]
    randomization: RandomizationRecord | None = None
    efficient_mprt: ComplexityRecord | None = None
    smooth_mprt: RandomizationRecord | None = None
    class_sensitivity: ClassSensitivityRecord | None = None
    deletion: CurveRecord | None = None
    insertion: CurveRecord | None = None
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    passed_over: dict[str, str] = dataclasses.field(default_factory=dict)
    settings: EvaluationSettings | None = None
    #: What was explained when not a class: ``{"explained", "score", "details": {image: its details}}``.
    target: dict[str, Any] | None = None
    #: Images with nothing to explain (no matching detection, an empty region), and why.
    not_explained: dict[str, str] = dataclasses.field(default_factory=dict)
    figures: dict[str, str] = dataclasses.field(default_factory=dict)

    KEYS: ClassVar[tuple[str, ...]] = ("model", "images", "seed", "inputs", *EVALUATION_CHECKS, "failed",
                                       "passed_over", "settings", "target", "not_explained", "figures")
    #: Written only when not empty.
    OPTIONAL: ClassVar[tuple[str, ...]] = (*EVALUATION_CHECKS, "failed", "passed_over", "settings", "target",
                                           "not_explained")

    @property
    def checks(self) -> dict[str, CheckRecord]:
        """The checks that were run, by key, in the file's order."""
        return {k: getattr(self, k) for k in EVALUATION_CHECKS if getattr(self, k) is not None}

    def to_json(self) -> Json:
        out: Json = {"model": self.model, "images": self.images, "seed": self.seed, "inputs": list(self.inputs)}
        out.update({k: c.to_json() for k, c in self.checks.items()})
        for key in ("failed", "passed_over"):
            if getattr(self, key):
                out[key] = dict(getattr(self, key))
        if self.settings is not None:
            out["settings"] = self.settings.to_json()
        if self.target is not None:
            out["target"] = dict(self.target)
        if self.not_explained:
            out["not_explained"] = dict(self.not_explained)
        out["figures"] = dict(self.figures)
        return out

    @classmethod
    def from_json(cls, data: Any, *, lenient: bool = False, odd: list[str] | None = None) -> EvaluationRecord:
        """Read the file's object. Strict (the default): raises :class:`RecordError` naming the first
        part that is missing, unknown or of the wrong type. ``lenient`` (for a hand-edited or foreign
        file shown as well as it can be): such parts read as empty, and their dotted names are added
        to ``odd``; only a value that is not an object at all raises."""
        if not isinstance(data, Mapping):
            raise RecordError(f"evaluation.json: a JSON {type(data).__name__}, expected an object")
        doc = _Doc(lenient=lenient)
        d = doc.obj(data, "evaluation.json", cls.KEYS, optional=cls.OPTIONAL)
        checks: dict[str, Any] = {}
        for key in EVALUATION_CHECKS:
            if key not in d:
                continue
            if isinstance(d[key], Mapping):
                checks[key] = _CHECK_READERS[key](doc, d[key], key)
            else:  # lenient: the check is left out
                doc.bad(key, d[key], "an object")
        record = cls(
            model=doc.text(d.get("model"), "model"), images=doc.integer(d.get("images"), "images"),
            seed=doc.integer(d.get("seed"), "seed"), inputs=doc.texts(d.get("inputs"), "inputs"), **checks,
            failed=doc.names(d["failed"], "failed") if "failed" in d else {},
            passed_over=doc.names(d["passed_over"], "passed_over") if "passed_over" in d else {},
            settings=EvaluationSettings.read(doc, d["settings"], "settings") if "settings" in d else None,
            target=dict(doc.obj(d["target"], "target")) if "target" in d else None,
            not_explained=doc.names(d["not_explained"], "not_explained") if "not_explained" in d else {},
            figures=doc.names(d.get("figures"), "figures"),
        )
        if odd is not None:
            odd.extend(doc.odd)
        return record
