"""Progress bars when ``tqdm`` is importable (it comes with diffusers/transformers); plain iteration otherwise."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a tqdm bar on stderr; the bar hides itself when stderr is not a terminal."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        yield from items
        return
    yield from tqdm(items, desc=desc, total=total, disable=None, leave=False)
