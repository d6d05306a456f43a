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


class Content(dict):
    """One input file of the run (from `input_data`'s "$datalake:1"):
    content["content_type"], content["metadata"], content["path"], and
    content.read() / .text() / .json() for its bytes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def read(self):
        with open(self["path"], "rb") as f:
            return f.read()

    def text(self, encoding="utf-8"):
        return self.read().decode(encoding)

    def json(self):
        return json.loads(self.read())


def write_result(result):
    """Bytes as they are, a string as UTF-8 text, anything else as JSON."""
    if result is None:
        return
    if isinstance(result, (bytes, bytearray, memoryview)):
        name, data = "result.bin", bytes(result)
    elif isinstance(result, str):
        name, data = "result.txt", result.encode("utf-8")
    else:
        name, data = "result.json", json.dumps(result, default=str).encode("utf-8")
    with open(name + ".tmp", "wb") as f:
        f.write(data)
    os.replace(name + ".tmp", name)


def main():
    code_dir = os.environ["SLUICE_CODE_DIR"]
    module_name, function_name = os.environ["SLUICE_HANDLER"].split(":", 1)
    with open("request.json") as f:
        request = json.load(f)
    request["contents"] = [Content(c) for c in request.get("contents") or []]
    with open("context.json") as f:
        context = Context(json.load(f))
    sys.path.insert(0, code_dir)
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        write_result(handler(request, context))
    except BaseException as e:  # noqa: BLE001 - every failure is the run's
        traceback.print_exc()
        sys.stderr.flush()
        with open("error.txt", "w") as f:
            f.write("".join(traceback.format_exception_only(type(e), e)).strip())
        sys.exit(1)


if __name__ == "__main__":
    main()
