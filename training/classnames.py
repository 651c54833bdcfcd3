"""Human names for class ids: "gibson_Flying_V" is shown as "Gibson Flying V", or as DATA/classes.toml says."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

CLASS_NAMES_FILE = "classes.toml"


class ClassNamesError(ValueError):
    """`classes.toml` cannot be read or names classes that are not there."""


def default_name(class_id: str) -> str:
    """A folder name as words: separators become spaces and each word starts with a capital."""
    words = [word for word in re.split(r"[_\-\s]+", class_id) if word]
    return " ".join(word[0].upper() + word[1:] for word in words) or class_id


def class_names(root: Path, classes: list[str]) -> dict[str, str]:
    """Every class's display name: from DATA/classes.toml (id = "name") where it has one, else `default_name`."""
    names = {class_id: default_name(class_id) for class_id in classes}
    path = Path(root) / CLASS_NAMES_FILE
    try:
        given = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return names
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClassNamesError(f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise ClassNamesError(f"{path} names {', '.join(unknown)}, which are not class folders ({', '.join(classes)})")
    for class_id, name in given.items():
        if not isinstance(name, str) or not name.strip():
            raise ClassNamesError(f"{path}: the name of {class_id} must be a non-empty string")
        names[class_id] = name.strip()
    return names


def names_for(classes: list[str], names: dict[str, str] | None) -> dict[str, str]:
    """The names a model carries, with defaults for a model exported before it carried any."""
    return {class_id: (names or {}).get(class_id) or default_name(class_id) for class_id in classes}
