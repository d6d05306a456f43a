# sluice's runner for user code: runs `handler(request, context)` of a
# deployment version in its own process. The worker writes request.json and
# context.json into the working directory, puts the code on sys.path and
# reads stdout/stderr line by line as the run's log.
import importlib
import json
import os
import sys
import traceback


class Context(dict):
    """The run's metadata, readable as context["run_id"] or context.run_id."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def main():
    code_dir = os.environ["SLUICE_CODE_DIR"]
    module_name, function_name = os.environ["SLUICE_HANDLER"].split(":", 1)
    with open("request.json") as f:
        request = json.load(f)
    with open("context.json") as f:
        context = Context(json.load(f))
    sys.path.insert(0, code_dir)
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        result = handler(request, context)
        if result is not None:
            with open("result.json", "w") as f:
                json.dump(result, f, default=str)
    except BaseException as e:  # noqa: BLE001 - every failure is the run's
        traceback.print_exc()
        sys.stderr.flush()
        with open("error.txt", "w") as f:
            f.write("".join(traceback.format_exception_only(type(e), e)).strip())
        sys.exit(1)


if __name__ == "__main__":
    main()
