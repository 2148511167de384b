"""big_vision-style config arguments: `--config=configs/x.py:key=value,flag`."""

import ml_collections


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
  """Parses 'k1=v1,flag,k2=v2' into a ConfigDict; bare words are True flags.

  Values are converted to the type of the default (so `p=0.3` is a float and `wd`
  a bool); an unknown key fails with the list of known ones.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (a.strip() for a in (arg or "").split(","))):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} in {arg!r} is unknown; known: "
                       f"{', '.join(sorted(defaults))}")
    default = defaults[key]
    if isinstance(default, bool):
      parsed[key] = value.lower() in ("", "1", "true", "yes")
    else:
      try:
        parsed[key] = type(default)(value) if value else default
      except ValueError:
        raise ValueError(f"config argument {key}={value!r} in {arg!r}: expected a "
                         f"{type(default).__name__}") from None
  return parsed
