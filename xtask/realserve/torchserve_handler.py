"""The TorchServe handler of the tiny model (`cargo xtask realserve torchserve`): a request body
`{"inputs": [[f, f, f, f], ...]}` gets `{"scores": [[p, p, p], ...]}`. The TorchScript model is
loaded by TorchServe's BaseHandler, as most custom handlers do.
"""
import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class TinyHandler(BaseHandler):
    def preprocess(self, data):
        rows = []
        for request in data:
            body = request.get("data") or request.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(body["inputs"])
        # One request per batch entry: remember how many rows each one sent.
        self.sizes = [len(r) for r in rows]
        return torch.tensor([row for r in rows for row in r], dtype=torch.float32)

    def postprocess(self, data):
        out, start = [], 0
        for size in self.sizes:
            out.append({"scores": data[start : start + size].tolist()})
            start += size
        return out
