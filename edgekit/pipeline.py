"""The export pipeline: model -> reference -> every target exported and judged (edgekit.verification)
-> bundle + report. What a job asks is decided first (edgekit.plan), before any work."""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgekit import bundle as B
from edgekit import destination as D
from edgekit import manifest as M
from edgekit.capture import MAX_LOG_CHARS, captured
from edgekit.converters import Artifact, Converter
from edgekit.data import CalibrationSet, load_samples
from edgekit.dynamic import export_example, torch_shapes
from edgekit.dynamic import resolve as resolve_dynamic
from edgekit.errors import UnsupportedOpError, UserError
from edgekit.html_report import write_html
from edgekit.job import ExportJob
from edgekit.model_source import load_model
from edgekit.parity import UNSUPPORTED, ParityResult
from edgekit.plan import model_defaults, optional_targets, plan, qat_steps
from edgekit.progress import QUIET, Progress
from edgekit.reference import export_program, run_reference, save_reference
from edgekit.report import abs_errors, build_report, markdown, report_key
from edgekit.size_probes import size_probes
from edgekit.spec import ModelSpec, TextPreprocess
from edgekit.tasks import resolve as resolve_task
from edgekit.verification import Outcome, verify_artifact


def _with_dynamic(spec: ModelSpec, given, loaded, convs: list, precision: str) -> tuple[ModelSpec, list[str]]:
    """The spec with the job's dynamic dimensions (edgekit.dynamic), checked against the model's
    inputs; without any, those a torch.export program was captured with, when every target of the
    job exports them (else the program is exported at its example's size, and the notes say why)."""
    if given:
        return dataclasses.replace(spec, dynamic=resolve_dynamic(given, spec.input_names, loaded.example_inputs)), []
    notes = [loaded.dynamic_note] if loaded.dynamic_note else []
    if not loaded.dynamic:
        return spec, notes
    ranges = ", ".join(d.describe() for d in loaded.dynamic)
    fixed = [c.info.name for c in convs if not c.info.dynamic]
    if precision != "fp32" or fixed:
        why = f"--quant {precision}" if precision != "fp32" else f"{', '.join(fixed)} export(s) fixed shapes only"
        return spec, notes + [f"the program's dynamic dimensions ({ranges}) were exported at the example's size: {why}"]
    return dataclasses.replace(spec, dynamic=loaded.dynamic), notes + [f"dynamic dimensions from the program: {ranges}"]


def _error_result(conv: Converter, precision: str, exc: Exception, program=None) -> ParityResult:
    """A target whose export raised: ``unsupported`` (the target cannot express an operator: named,
    with the user's source line and the way out) or ``error`` (the toolchain failed otherwise)."""
    notes = [f"deprecated: {conv.info.deprecated}"] if conv.info.deprecated else []
    if isinstance(exc, UnsupportedOpError):
        from edgekit.source_line import locate

        where = locate(program, exc.op, exc.node) or exc.source
        err = {**exc.to_dict(), "op": exc.op, "node": exc.node, "source": where}
        if where:
            err["message"] += f", from {where}"
        return ParityResult(conv.info.name, precision, UNSUPPORTED, error=err, notes=notes)
    err = exc.to_dict() if isinstance(exc, UserError) else {
        "code": "E-EXPORT-FAILED", "message": f"{type(exc).__name__}: {str(exc)[:1500]}",
        "fix": f"the {conv.info.name} toolchain failed on this model; drop the target or report the message"}
    return ParityResult(conv.info.name, precision, "error", error=err, notes=notes)


# Files the pipeline itself writes into a bundle: no target may write one of these names.
BUNDLE_FILES = ("manifest.json", "report.json", "report.md", "report.html")


def _export_target(conv: Converter, module, spec: ModelSpec, recipe, stage: Path, example: tuple, extra: dict,
                   program, owned: dict[str, str]):
    """Export one target with its toolchain's console output captured (edgekit.capture, kept in the
    report for that target) into a folder of its own, then move the files its Artifact lists into
    the bundle (``_place``: a file another target or the bundle owns is refused, never overwritten,
    and nothing unlisted ships). -> (the unsupported/error result or None, the Artifact or None, log)."""
    scratch = Path(tempfile.mkdtemp(prefix=f".export-{conv.info.name}-", dir=stage))
    try:
        with captured() as log:
            try:
                art = conv.export(module, spec, recipe, scratch, example, **extra)
                failed = _place(art, scratch, stage, owned)
            except Exception as exc:  # one target's toolchain failing must not stop the others
                art, failed = None, exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if failed is None:
        return None, art, log.text
    return _error_result(conv, "fp32" if recipe is None else recipe.scheme, failed, program), None, log.text


def _place(art: Artifact, scratch: Path, stage: Path, owned: dict[str, str]) -> UserError | None:
    """Move an artifact's files from its export folder into the bundle and record their owner."""
    for f in art.files:
        if f in owned:
            return UserError("E-ARTIFACT-CLASH", f"target {art.target} wrote {f}, a file that {owned[f]} owns in the "
                             "bundle", f"give {art.target}'s files names of their own (e.g. a target-specific suffix)")
        try:
            written = M.inside(scratch, f, f"{art.target}'s file").is_file()
        except UserError:
            written = False
        if not written:
            return UserError("E-EXPORT-FAILED", f"target {art.target} lists {f} among its files but did not write it "
                             "in its folder", f"report it: {art.target}'s export must write every file it lists")
    for f in art.files:
        (stage / f).parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch / f, stage / f)
        owned[f] = f"target {art.target}"
    return None


def _coverage(result: ParityResult, stage: Path, art: Artifact) -> None:
    from edgekit.converters import Converter, get

    if type(get(art.target)).coverage is not Converter.coverage:  # the target analyses its files
        meta = {**art.meta, "target": art.target, "precision": art.precision}
        result.extra["coverage"] = coverage(stage, art.path, meta)


def _bundle_spec(spec: ModelSpec, stage: Path) -> ModelSpec:
    """Copy assets the spec points to (the tokenizer) into the bundle; the bundle's spec names them relatively."""
    pre = spec.preprocess
    if isinstance(pre, TextPreprocess) and Path(pre.tokenizer).is_absolute():
        dest = stage / "tokenizer"
        dest.mkdir()
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(pre.tokenizer) / name).is_file():
                shutil.copy2(Path(pre.tokenizer) / name, dest / name)
        return dataclasses.replace(spec, preprocess=TextPreprocess("tokenizer", pre.max_length))
    return spec


def coverage(root: Path, rel: str, meta: dict, timeout_s: float = 300) -> dict:
    """Delegate coverage of the artifact ``root/rel`` (edgekit.inspect), computed in a subprocess run
    in ``root`` (so the report names the file as the bundle does); never raises."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"edgekit-inspect-{os.getpid()}-") as tmp:
        out = Path(tmp) / "coverage.json"
        try:
            proc = subprocess.run([sys.executable, "-m", "edgekit.inspect", rel, json.dumps(meta), str(out)],
                                  cwd=root, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": {"code": "E-RUNTIME-CRASH", "message": f"coverage analysis timed out after {timeout_s:.0f} s",
                              "fix": "run `edgekit inspect` on the file to see where it stalls"}}
        if proc.returncode != 0 or not out.is_file():
            return {"error": {"code": "E-RUNTIME-CRASH", "message": f"coverage analysis failed: {proc.stderr.strip()[-500:]}",
                              "fix": "run `edgekit inspect` on the file for the full message"}}
        return json.loads(out.read_text())


def _with_task(spec: ModelSpec, given: str | None) -> tuple[ModelSpec, list[str]]:
    """The spec with the job's task (fitted to the outputs, E-ARGS when it does not fit) or the inferred one."""
    task, note = resolve_task(given, spec.task, [(t.name, t.shape) for t in spec.outputs])
    spec = dataclasses.replace(spec, task=task.name, task_options=tuple(task.options().items()))
    return spec, [note] if note else []


def _split(data: CalibrationSet, recipe, samples: int, train: bool = False
           ) -> tuple[CalibrationSet | None, CalibrationSet | None, CalibrationSet, list[str]]:
    """-> (calibration set, training set, verification set, notes). A quantized export calibrates on
    the first two thirds and verifies on the held-out last third, so fidelity and cost use unseen
    data; a compressing job (``train``) trains on the same first part, never on what verifies it.
    Weight-only precisions (fp16, dynamic) calibrate nothing: they verify on the first N, as FP32."""
    from edgekit.quant.recipe import WEIGHT_ONLY_SCHEMES

    calibrated = recipe is not None and recipe.scheme not in WEIGHT_ONLY_SCHEMES
    if not calibrated and not train:
        notes = [] if recipe is None else [f"{recipe.scheme}: weights only, no calibration; verified on {min(samples, len(data))} samples"]
        if samples > len(data):
            notes.append(f"verified on all {len(data)} samples of the data (fewer than --samples {samples})")
        return None, None, data.head(samples), notes
    n = len(data)
    hold = n // 3 if n >= 3 else 0
    first = data.slice(0, n - hold)
    vset = data.slice(n - hold).head(samples) if hold else data.head(samples)
    cal = first.head(recipe.max_samples) if calibrated else None
    used = " and ".join(w for w, on in (("calibrated", calibrated), ("trained", train)) if on)
    notes = [f"{used} on {len(cal or first)} samples (the first of {n}); verified on "
             + (f"{len(vset)} held-out samples" if hold else f"{len(vset)} of the same samples (too few to hold any out)")]
    if calibrated and len(cal) < 16:
        notes.append(f"WARNING: only {len(cal)} calibration samples (< 16): activation ranges may not represent real inputs")
    return cal, first if train else None, vset, notes


def _checked_labels(data: CalibrationSet, spec: ModelSpec, budget) -> tuple[CalibrationSet, list[str]]:
    """Labels the model can score, and a budget whose metrics this job measures, before any export.
    Labels a folder states (class folders, labels.csv) that do not fit are E-DATA-LABELS; the y of
    in-memory (x, y) batches may be anything, so when it does not fit it is left out, with a note.
    -> (the data, the notes on its labels)."""
    from edgekit.accuracy import class_count
    from edgekit.labels import IN_MEMORY, check_labels

    try:
        check_labels(data.labels, class_count(spec), data.root)
    except UserError as exc:
        if not data.labels_note.startswith(IN_MEMORY):
            raise
        data = dataclasses.replace(data, labels=None, labels_note=f"the (x, y) batches' y not used as labels: {exc.what}")
    if budget is not None and budget.agreement is not None and spec.task_spec.name != "classification":
        raise UserError("E-ARGS", f"--budget agreement needs a classification model; the task is {spec.task_spec}",
                        "state the budget as sqnr>=DB instead")
    if budget is not None and budget.accuracy_drop is not None and data.labels is None:
        raise UserError("E-ARGS", "--budget accuracy_drop needs labelled data, and the data has no labels"
                        + (f" ({data.labels_note})" if data.labels_note else ""),
                        "pass --data as one folder per class, or add a labels.csv (file,label) to it")
    return data, [data.labels_note] if data.labels_note else []


def _check_keep_float(module, recipe) -> None:
    """A --keep-float name that matches no layer of the model is E-ARGS, before any export."""
    if recipe is not None and recipe.keep_float:
        from edgekit.quant.recipe import keep_float_modules

        keep_float_modules(module, recipe)


def _compressed(job: ExportJob, module, example: tuple, train, progress):
    """The job's compression stage (edgekit.compress.stage) run on the training part: the compressed
    model becomes the FP32 model every target exports. -> (the model, the stage's result or None)."""
    if job.compress is None:
        return module, None
    from edgekit.compress.stage import compress, from_calibration

    progress(f"compressing ({', '.join(job.compress.steps)}) on {len(train)} samples")
    return compress(module, example, job.compress, from_calibration(train))


def _inputs_entry(stage: Path, vset: CalibrationSet) -> dict:
    """The manifest's verification_inputs: the stored file, its hash, the set, and its labels if any."""
    return {"file": B.VERIFY_INPUTS, "file_sha256": B.sha256_file(stage / B.VERIFY_INPUTS), **vset.describe(),
            **({"labels": list(vset.labels)} if vset.labels else {})}


def _data_entries(stage: Path, vset: CalibrationSet, data: CalibrationSet, quantization: dict | None) -> dict:
    """The manifest's reference, verification inputs, data and quantization entries."""
    return {"reference": {"file": B.REFERENCE, "sha256": B.sha256_file(stage / B.REFERENCE)},
            "verification_inputs": _inputs_entry(stage, vset), "data": data.describe(), "quantization": quantization}


def _quantization_entry(recipe, cal, notes: list[str], budget) -> dict | None:
    """The manifest's quantization: the recipe, what it calibrated on, the notes and the budget."""
    if recipe is None:
        return None
    return {"recipe": recipe.to_dict(), "calibration": None if cal is None else cal.describe(), "notes": notes,
            "budget": None if budget is None else budget.to_dict()}


def _pt2e_quantizers(convs: list, scheme: str) -> dict[str, tuple[list[str], object]]:
    """For the budget search: quantizer class -> (the job's targets that place the scheme's q/dq pairs
    with it, a factory of it). One simulation per placement (int8: tflite's litert-torch quantizer,
    executorch's and onnx's XNNPACK one; int16x8: tflite's 16x8 one), so the search meets the budget
    for every target; a job with no PT2E target simulates any installed one (the search simulates,
    it writes nothing)."""
    from edgekit.converters import all_converters

    found: dict[str, tuple[list[str], object]] = {}
    for conv in convs:
        try:
            quantizer = conv.pt2e_quantizer(scheme)
        except UserError:  # its toolchain is not installed
            continue
        if quantizer is not None:
            factory = functools.partial(conv.pt2e_quantizer, scheme)
            found.setdefault(type(quantizer).__name__, ([], factory))[0].append(conv.info.name)
    if found:
        return found
    for conv in all_converters():
        try:
            if conv.pt2e_quantizer(scheme) is not None:
                return {conv.info.name: ([conv.info.name], functools.partial(conv.pt2e_quantizer, scheme))}
        except UserError:
            continue
    raise UserError("E-DEP-MISSING", "the budget search simulates INT8 with a PT2E target's quantizer, and none is installed",
                    "pip install -c constraints.txt 'edgekit[tflite]' (or executorch, onnx)")


def _budget_search(job: ExportJob, convs: list, module, example: tuple, cal, vset, recipe, spec: ModelSpec, progress):
    """With --budget and a static scheme (int8, int16x8): the cheapest keep-float assignment that meets
    it on the held-out samples (edgekit.quant.search). -> (the recipe to export, the trials for the
    report or None)."""
    if job.budget is None or recipe is None or recipe.scheme not in ("int8", "int16x8"):
        return recipe, None
    from edgekit.quant.search import search

    placements = _pt2e_quantizers(convs, recipe.scheme)
    with captured():
        fp32 = run_reference(module, vset.samples)
        chosen, trials = search(module, example, cal, vset, fp32, recipe, job.budget, spec,
                                [factory for _, factory in placements.values()], progress)
    kept = ", ".join(chosen.keep_float) or "none"
    sims = " and ".join(f"{'/'.join(names)}'s" for names, _ in placements.values())
    note = (f"budget search ({job.budget.describe()}): {len(trials)} trial(s) of {sims} PT2E simulation on "
            f"{len(vset)} held-out samples, kept float: {kept}")
    return chosen, {"budget": job.budget.to_dict(), "trials": [t.to_dict() for t in trials],
                    "chosen": list(chosen.keep_float), "note": note}


def _mixed_precision(module, cal, recipe, progress):
    """recipe.float_share: the layers sensitive to the scheme join keep_float for every target (edgekit.quant.mixed).
    -> (the recipe to export, the note naming them or None)."""
    if recipe is None or not recipe.float_share:
        return recipe, None
    from edgekit.quant.mixed import SENSITIVITY_SAMPLES, describe, sensitive_float

    progress(f"measuring each layer's {recipe.scheme} sensitivity on {min(len(cal), SENSITIVITY_SAMPLES)} calibration samples")
    with captured():
        chosen, rows = sensitive_float(module, cal.samples, recipe)
    return chosen, describe(rows, recipe.float_share, recipe.scheme) or (
        f"mixed precision (float_share {recipe.float_share:g}): no layer's {recipe.scheme} error is out of proportion "
        "to its size")


def _quantization_aware(steps: int, module, recipe, cal, progress):
    """--qat-steps: train the fake-quant model on the calibration part (edgekit.quant.qat). -> (the model
    the targets that take it quantize, the recipe carrying its learned input ranges, the training report
    or None). The FP32 reference stays the model before training, so the cost vs FP32 includes what it changed."""
    if not steps:
        return module, recipe, None
    from edgekit.quant.qat import QATSettings, train_quantized

    progress(f"quantization-aware training: {steps} steps on {len(cal)} calibration samples")
    with captured():
        res = train_quantized(module, list(cal.samples), recipe, QATSettings(steps=steps))
    return res.model, res.recipe(recipe), {**res.report, "note": res.describe()}


def describe_model(model) -> str:
    return model if isinstance(model, str) else str(model) if isinstance(model, os.PathLike) else type(model).__name__


def _load_data(data, loaded) -> CalibrationSet:
    """The job's samples: a folder (or the built-in model's default folder), or in-memory arrays."""
    from edgekit.data import samples_from

    if data is None:
        if loaded.default_data is None:
            raise UserError("E-DATA-EMPTY", f"model {loaded.source} has no default data",
                            "pass data (a folder, arrays or a DataLoader; --data DIR on the command line)")
        data = loaded.default_data
    if isinstance(data, (str, os.PathLike)):
        return load_samples(data, loaded.spec)
    return samples_from(data, loaded.spec)


def export_bundle(job: ExportJob, progress: Progress = QUIET, command: str = "") -> Outcome:
    convs, recipe, precision, all_notes, fixed = plan(job)
    for conv in convs:
        conv.check_available()
    if job.out:
        D.check_replaceable(Path(job.out))  # before any heavy work; checked again under the lock
    progress(f"loading model {describe_model(job.model)}")
    with captured() as model_log:  # a model package's import-time logs and download bars: into the report
        loaded = load_model(job.model, job.example_inputs)
    spec, task_notes = _with_task(loaded.spec, job.task)
    spec, dynamic_notes = _with_dynamic(spec, job.dynamic_shapes, loaded, convs, precision)
    recipe, default_notes = model_defaults(job, recipe, loaded)
    _check_keep_float(loaded.module, recipe)
    out = Path(job.out or f"bundles/{spec.name}")
    with D.locked(out):  # one export per destination; leftovers of a crashed run are cleaned first
        data, label_notes = _checked_labels(_load_data(job.data, loaded), spec, job.budget)
        cal, train, vset, split_notes = _split(data, recipe, job.samples, train=job.compress is not None)
        split_notes = all_notes + default_notes + task_notes + dynamic_notes + split_notes + label_notes
        example = tuple(torch.from_numpy(a) for a in (export_example(spec.dynamic, spec.input_names, data.samples)
                                                      if spec.dynamic else data.samples[0]))
        loaded.module, compression = _compressed(job, loaded.module, example, train, progress)
        recipe, mixed = _mixed_precision(loaded.module, cal, recipe, progress)
        split_notes += [mixed] if mixed else []
        recipe, searched = _budget_search(job, convs, loaded.module, example, cal, vset, recipe, spec, progress)
        split_notes += [searched["note"]] if searched else []
        progress("capturing the FP32 reference with torch.export")
        with captured() as reference_log:
            program = export_program(loaded.module, example, spec.name, torch_shapes(spec.dynamic, spec.input_names))
        untrained = (loaded.module, recipe)
        quantized_from, recipe, trained = _quantization_aware(qat_steps(job, recipe, loaded), loaded.module, recipe, cal, progress)
        split_notes += [trained["note"]] if trained else []
        with B.staging(out) as stage:
            bspec = _bundle_spec(spec, stage)
            save_reference(program, bspec, stage / B.REFERENCE)
            B.save_inputs(stage / B.VERIFY_INPUTS, vset.stacked(), spec.input_names)
            if spec.labels:
                B.write_text(stage / "labels.txt", "\n".join(spec.labels) + "\n")
            progress(f"reference outputs on {len(vset)} samples")
            reference = run_reference(program.module(), vset.samples)
            probes = size_probes(spec, vset, program.module())
            run = _TargetRun(job, quantized_from, spec, recipe, stage, example, cal, vset, reference, program, progress, probes,
                             untrained if trained else None)
            results, artifacts, errors = run.all(convs, precision)
            results += fixed
            env = B.environment({k: v for conv in convs for k, v in conv.versions().items()})
            manifest = {
                "format": B.FORMAT, "format_version": B.FORMAT_VERSION, "created": B.now(),
                "model": {"name": spec.name, "source": loaded.source, "spec": bspec.to_dict()},
                **_data_entries(stage, vset, data, _quantization_entry(recipe, cal, split_notes, job.budget)),
                "artifacts": [_manifest_entry(stage, conv, art) for conv, art in artifacts],
                "versions": env, "compression": None if compression is None else compression.to_dict(),
            }
            B.write_json(stage / B.MANIFEST, manifest)
            model_info = {"name": spec.name, "source": loaded.source, "task": str(spec.task_spec)}
            report = build_report("export", model_info, vset.describe(), results,
                                  env, command or f"edgekit export {describe_model(job.model)}", manifest["created"], split_notes,
                                  optional=optional_targets(job.targets, convs))
            report["model_log"] = (model_log.text + reference_log.text)[-MAX_LOG_CHARS:]
            if searched:
                report["budget_search"] = searched
            if trained:
                report["quantization_aware_training"] = trained
            _write_reports(stage, report, errors, compression)
        return Outcome(out, report, results, errors)


@dataclass
class _TargetRun:
    """The target loop of an export: each target exported into its own folder, its files placed in
    the bundle, then verified in its runtime and its coverage analysed."""

    job: ExportJob
    module: Any
    spec: ModelSpec
    recipe: Any
    stage: Path
    example: tuple
    cal: CalibrationSet | None
    vset: CalibrationSet
    reference: list
    program: Any
    progress: Progress
    probes: list  # edgekit.size_probes.SizeProbe: the other sizes a model with dynamic shapes is verified at
    untrained: tuple | None = None  # with QAT: (model, recipe) before training, for a target that does not take it

    def all(self, convs, precision: str) -> tuple[list, list, dict]:
        owned = {str(p.relative_to(self.stage)): "edgekit" for p in self.stage.rglob("*") if p.is_file()}
        owned.update({name: "edgekit" for name in BUNDLE_FILES})
        results, artifacts, errors = [], [], {}
        for conv in convs:
            self.progress("exporting" if self.cal is None else f"calibrating on {len(self.cal)} samples and exporting "
                          f"{precision}", conv.info.name)
            res, art, outputs = self.one(conv, owned)
            if art is not None:
                artifacts.append((conv, art))
            if outputs is not None:
                errors[report_key(res)] = outputs
            results.append(res)
            self.progress(res.status if art is not None else f"{res.status}: {res.error['code']}", conv.info.name)
        return results, artifacts, errors

    def one(self, conv: Converter, owned: dict):
        """-> (its result, its Artifact or None, its absolute errors for the report or None)."""
        extra = {} if self.cal is None else {"calibration": self.cal}
        module, recipe = self.module, self.recipe
        untrained = self.untrained is not None and "qat" not in conv.info.levers
        if untrained:
            module, recipe = self.untrained
        res, art, export_log = _export_target(conv, module, self.spec, recipe, self.stage, self.example, extra,
                                              self.program, owned)
        errors = None
        if art is not None:
            self.progress("running in the host runtime (subprocess)", conv.info.name)
            with captured() as log:
                checked = verify_artifact(conv, art, self.stage, self.vset, self.reference, self.spec,
                                          self.job.timeout_s, module, self.probes, self.job.budget)
                _coverage(checked.result, self.stage, art)
            res, export_log = checked.result, export_log + log.text
            if checked.outputs is not None:
                errors = abs_errors(checked.reference, checked.outputs)
        res.extra["export_log"] = export_log
        if untrained:
            res.notes.append(f"exported from the model before quantization-aware training: the student simulates the "
                             f"int8 grid of the targets that take it, not {conv.info.name}'s")
        return res, art, errors


def _manifest_entry(stage: Path, conv: Converter, art: Artifact) -> dict:
    return {**art.to_dict(), "files": B.file_entries(stage, art.files), "runtime": conv.info.runtime,
            "exporter": conv.info.exporter, "delegates": list(conv.info.delegates), "deprecated": conv.info.deprecated}


def _write_reports(stage: Path, report: dict, errors: dict, compression) -> None:
    if compression is not None:
        report["compression_stage"] = {**compression.to_dict(), "markdown": compression.markdown()}
    B.write_json(stage / "report.json", report)
    B.write_text(stage / "report.md", markdown(report))
    write_html(stage / "report.html", report, errors)
