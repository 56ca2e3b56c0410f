"""What the Hugging Face converters' command lines share (tools/convert_hf_*.py)."""

import json


def random_fields(ap, option, value, paths):
    """The config fields a converter's random-model option (`option`, e.g. "--random-init")
    names: a JSON object, with exactly one path (OUT_DIR) beside it; a usage error otherwise."""
    if len(paths) != 1:
        ap.error(f"{option} takes exactly one path: OUT_DIR")
    try:
        fields = json.loads(value)
    except json.JSONDecodeError as e:
        ap.error(f"{option}: invalid JSON: {e}")
    if not isinstance(fields, dict):
        ap.error(f"{option}: expected a JSON object")
    return fields
