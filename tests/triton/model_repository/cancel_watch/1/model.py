"""cancel_watch: a decoupled python-backend model that notices cancellation.

COUNT int32 [1] -> up to COUNT responses, response i: INDEX int32 [1] = i, TOKEN
uint8 [-1] = the bytes of ``f"tok{i} "``, one every ``delay_seconds`` (config
parameter, default 0.01; env ``CANCEL_WATCH_DELAY`` overrides it). Before each
response it asks ``request.is_cancelled()``; when Triton says yes it stops and ends
the request with a final flag (no more responses).

Each request runs in its own thread, so several requests on one stream interleave.
When a request ends, the model writes a record of what it saw to
``$CANCEL_WATCH_RECORD/<pid>-<n>.json`` (a directory; n counts the instance's requests
from 1; written whole and renamed, so readers never see half a file)::

    {"request_id": "...", "count": COUNT, "sent": responses sent,
     "cancelled": whether it stopped because is_cancelled() said so}

Runs inside Triton's python-backend stub, so it imports only the standard library,
numpy and ``triton_python_backend_utils``.
"""

import json
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        delay = params.get("delay_seconds", {}).get("string_value", "0.01")
        self._delay = float(os.environ.get("CANCEL_WATCH_DELAY", delay))
        self._record_dir = os.environ.get("CANCEL_WATCH_RECORD")
        self._lock = threading.Lock()
        self._requests = 0
        self._threads = []

    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self._serve, args=(request,), daemon=True)
            thread.start()
            self._threads.append(thread)
        self._threads = [t for t in self._threads if t.is_alive()]
        return None  # decoupled: responses go through each request's sender

    def _serve(self, request):
        sender = request.get_response_sender()
        count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy().reshape(-1)[0])
        sent = 0
        cancelled = False
        try:
            for i in range(count):
                time.sleep(self._delay)
                if request.is_cancelled():
                    cancelled = True
                    break
                index = pb_utils.Tensor("INDEX", np.array([i], dtype=np.int32))
                token = pb_utils.Tensor(
                    "TOKEN", np.frombuffer(f"tok{i} ".encode(), dtype=np.uint8).copy()
                )
                sender.send(pb_utils.InferenceResponse(output_tensors=[index, token]))
                sent += 1
        finally:
            self._write_record(request, count, sent, cancelled)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _write_record(self, request, count, sent, cancelled):
        if not self._record_dir:
            return
        with self._lock:
            self._requests += 1
            n = self._requests
        record = {
            "request_id": request.request_id(),
            "count": count,
            "sent": sent,
            "cancelled": cancelled,
        }
        path = os.path.join(self._record_dir, f"{os.getpid()}-{n}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)

    def finalize(self):
        for thread in self._threads:
            thread.join(timeout=5)
