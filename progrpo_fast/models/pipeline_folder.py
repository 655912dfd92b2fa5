"""A local diffusers pipeline folder's ``model_index.json``, read with errors that name the file."""
from __future__ import annotations

import json
from pathlib import Path


def read_model_index(folder: str | Path) -> dict:
    """The parsed ``folder/model_index.json`` (component name -> [library, class]); ValueError
    naming the file when it is missing, unreadable, not JSON or not a JSON object."""
    path = Path(folder).expanduser() / "model_index.json"
    if not path.is_file():
        raise ValueError(f"model path {str(folder)!r} is not a local diffusers pipeline folder (no model_index.json); "
                         "download the model once with `huggingface-cli download` or `pipe.save_pretrained(path)` and pass that folder")
    try:
        index = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a valid model_index.json ({err}); "
                         "re-download the pipeline or write it again with pipe.save_pretrained") from None
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ValueError(f"{path} must be a JSON object naming the pipeline class in '_class_name' "
                         f"(as pipe.save_pretrained writes it), got {type(index).__name__}"
                         f"{'' if not isinstance(index, dict) else ' without _class_name'}")
    return index
