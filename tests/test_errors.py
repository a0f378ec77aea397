"""The base error and the close-match suggestions every unknown name gets."""

from __future__ import annotations

import pytest

from guided_backprop.errors import GuidedBackpropError, UnknownNameError, close_matches


def test_close_matches_are_unique_and_ordered_by_likeness() -> None:
    assert close_matches("vgg91", ["vgg19", "resnet50", "vgg19", "vgg16"]) == ["vgg19", "vgg16"]
    assert close_matches("cat", ["Egyptian cat", "dog"]) == ["Egyptian cat"]  # substring fallback
    assert close_matches("zzz", ["a", "b"]) == []


def test_unknown_name_message_names_value_and_suggestions() -> None:
    err = UnknownNameError("layer", "features.3x", ["features.3", "features.30", "classifier"], hint="see x")
    assert isinstance(err, GuidedBackpropError) and isinstance(err, LookupError)
    assert str(err).startswith("unknown layer 'features.3x'; did you mean 'features.3'")
    assert str(err).endswith("(see x)")
    few = UnknownNameError("method", "nope", ["a", "b"])
    assert "valid: 'a', 'b'" in str(few)
    with pytest.raises(UnknownNameError):
        raise few


def test_one_mapping_from_how_a_run_ended_to_its_exit_code() -> None:
    from guided_backprop.batch import BatchResult, DiskFull, PeerFailed, RunStopped
    from guided_backprop.errors import ExitCode, ModelError, Terminated, exit_code
    from guided_backprop.evaluate.run import EvaluateRun, WriteError

    assert exit_code() == ExitCode.OK and exit_code(failed=2) == ExitCode.SOME_FAILED
    assert exit_code(KeyboardInterrupt()) == 130 and exit_code(Terminated()) == 143
    assert exit_code(ModelError("x")) == ExitCode.USAGE and exit_code(ValueError("x")) == ExitCode.FAILED
    assert exit_code(DiskFull("x")) == 4 and exit_code(RunStopped("x")) == 3 and exit_code(PeerFailed("x", 143)) == 143
    assert exit_code(WriteError("out", OSError(28, "No space left on device"))) == ExitCode.DISK_FULL
    # the runs' own codes come from it: a failed input is 1 on rank 0 only (torchrun), a stop 130 or 143
    assert BatchResult(output=None, failed=1).exit_code == 1  # type: ignore[arg-type]
    assert BatchResult(output=None, failed=1, rank=1).exit_code == 0  # type: ignore[arg-type]
    assert BatchResult(output=None, interrupted=True, signal="SIGTERM").exit_code == 143  # type: ignore[arg-type]
    assert EvaluateRun(evaluation=None, output=None, failed={"a": "b"}).exit_code == 1  # type: ignore[arg-type]


def test_each_commands_exit_code_table_is_generated_from_the_one_enum() -> None:
    import re

    from guided_backprop.cli import commands as cli
    from guided_backprop.cli import options as cli_options
    from guided_backprop.errors import ExitCode

    for table in (cli_options.EXIT_CODES, cli.EVALUATE_EXIT_CODES, cli.UNITS_EXIT_CODES, cli.REPORT_EXIT_CODES):
        codes = [int(c) for c in re.findall(r"(?:^Exit codes: |; )(\d+) [a-zA-Z]", table)]
        assert codes == sorted(set(codes)) and set(codes) <= {int(c) for c in ExitCode} and {0, 3} <= set(codes), table
    assert cli_options.exit_code_help({ExitCode.OK: "done", ExitCode.INTERRUPTED: "stopped"}, "Rerun.") == (
        "Exit codes: 0 done; 130 stopped. Rerun.")
