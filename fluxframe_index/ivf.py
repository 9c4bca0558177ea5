"""Train an IVF index on a sample of a bundle's vectors and write it list by list (memory stays bounded).

faiss's own ``index.add`` keeps every vector of every list in RAM until ``write_index``
(N x d x 4 bytes: 1.5 GB at 1M x 376). Here the file is written in streaming passes
over vectors.npy instead, each reading it block by block with plain reads (a memory
map would count every page it touched as resident):

1. gather the training sample (sorted random rows) and train the centroids;
2. assign every vector to its nearest centroid (4 bytes per vector kept);
3. write the inverted lists straight to their final place in the file: each block's
   rows sorted by list, one ``pwrite`` per (block, list) run, then each list's ids.

The file is faiss's own IndexIVFFlat format, byte for byte what ``write_index`` would
write: the header comes from ``faiss.serialize_index`` of the trained, empty index, the
lists use the contiguous layout that ``IO_FLAG_MMAP`` maps instead of reading, and the
file is read back once, memory-mapped, to prove it. Peak memory: the training sample,
two blocks and 12 bytes per vector.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
from numpy.typing import NDArray

from shared.atomic import atomic_file
from shared.bundle import IndexInfo
from shared.cli_support import progress_bar
from shared.errors import BundleError

# FAISS warns below 39 training points per centroid; 64 gives stabler lists.
POINTS_PER_CENTROID = 64
ADD_BLOCK = 65_536
SAMPLE_SEED = 1234
# What serialize_index writes at the end of an empty IndexIVFFlat: ilar, nlist, code_size, "sprs", no entries.
_EMPTY_TAIL = struct.Struct("<4sQQ4sQ")
_SPARSE_NONE = 12  # "sprs" + an empty vector: replaced by "full" + the list sizes


def auto_nlist(n: int) -> int:
    """About 4*sqrt(N), rounded to a power of two, and never more lists than the data can train."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 1 << max(0, round(math.log2(target)))
    return max(1, min(nlist, n // 39))


def auto_nprobe(nlist: int) -> int:
    # Measured by make bench on canny features (bench-out/results.json, recall@10 vs exact): 0.997 at
    # nprobe 16 of 512 (20K), 1.000 at 16 of 1024 (100K), 0.999 at 16 of 2048 (500K), 1.000 at 32 of
    # 4096 (1M, 1.18 ms/frame), while the earlier nlist/8 cost 11-13 ms/frame at 1M for the same recall.
    return max(1, min(nlist, max(16, nlist // 128)))


class _VectorFile:
    """vectors.npy read block by block through a file handle: nothing stays resident."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Mapping reads only the header; the map is dropped before any page of data is touched.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.memmap) or mapped.dtype != np.float32 or mapped.ndim != 2:
            raise BundleError(f"{path}: not a float32 matrix")
        if not mapped.flags.c_contiguous:
            raise BundleError(f"{path}: not stored in C order")
        self.offset = int(mapped.offset)
        self.n, self.dim = int(mapped.shape[0]), int(mapped.shape[1])
        del mapped

    def blocks(self, rows: int = ADD_BLOCK) -> Iterator[tuple[int, NDArray[np.float32]]]:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            for start in range(0, self.n, rows):
                count = min(rows, self.n - start)
                block = np.fromfile(handle, dtype=np.float32, count=count * self.dim)
                if block.size != count * self.dim:
                    raise BundleError(f"{self.path}: shorter than its header says")
                yield start, block.reshape(count, self.dim)

    def rows(self, ids: NDArray[np.int64]) -> NDArray[np.float32]:
        """The rows ``ids`` (sorted), gathered in one sequential pass."""
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        for start, block in self.blocks():
            lo, hi = np.searchsorted(ids, [start, start + block.shape[0]])
            out[lo:hi] = block[ids[lo:hi] - start]
        return out


def _header(index: faiss.IndexIVFFlat, n: int) -> bytes:
    """The trained empty index's bytes up to its list layout ("sprs", dropped), with ntotal set to ``n``."""
    empty = bytes(faiss.serialize_index(index))
    want_tail = _EMPTY_TAIL.pack(b"ilar", int(index.nlist), int(index.code_size), b"sprs", 0)
    # fourcc, int32 d, int64 ntotal: the layout of every faiss index header.
    fourcc, dim, ntotal = struct.unpack_from("<4siq", empty)
    if fourcc != b"IwFl" or dim != index.d or ntotal != 0 or not empty.endswith(want_tail):
        raise BundleError(
            f"faiss {faiss.__version__} serialises IndexIVFFlat in a layout this FluxFrame does not know; "
            "build with --index flat or another faiss-cpu version"
        )
    head = bytearray(empty[:-_SPARSE_NONE])
    struct.pack_into("<q", head, 8, n)
    return bytes(head)


def _train(source: _VectorFile, lists: int, metric: int) -> tuple[faiss.IndexIVFFlat, int]:
    rng = np.random.default_rng(SAMPLE_SEED)
    sample_size = min(source.n, lists * POINTS_PER_CENTROID)
    sample = source.rows(np.sort(rng.choice(source.n, size=sample_size, replace=False)))
    quantizer = faiss.IndexFlatIP(source.dim) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(source.dim)
    index = faiss.IndexIVFFlat(quantizer, source.dim, lists, metric)
    index.cp.seed = SAMPLE_SEED
    index.train(sample)
    return index, sample_size


def build_ivf_index(
    vectors_path: Path,
    index_path: Path,
    *,
    nlist: int | None,
    progress: bool,
    metric: int = faiss.METRIC_INNER_PRODUCT,
) -> IndexInfo:
    """IVF over a float32 matrix file: inner product for feature vectors, METRIC_L2 for tile descriptors."""
    source = _VectorFile(vectors_path)
    n = source.n
    lists = auto_nlist(n) if nlist is None else max(1, min(nlist, n))
    index, sample_size = _train(source, lists, metric)
    code_size = int(index.code_size)
    header = _header(index, n)
    with progress_bar(2 * n, "ivf lists", "vec", progress) as bar:
        assignment = np.empty(n, dtype=np.int32)
        for start, block in source.blocks():
            _, nearest = index.quantizer.search(block, 1)
            assignment[start : start + block.shape[0]] = nearest[:, 0]
            bar.update(block.shape[0])
        sizes = np.bincount(assignment, minlength=lists).astype(np.int64)
        data_start = len(header) + 4 + 8 + 8 * lists
        list_bytes = sizes * (code_size + 8)
        codes_at = data_start + np.concatenate([[0], np.cumsum(list_bytes)[:-1]])
        ids_at = codes_at + sizes * code_size
        filled = np.zeros(lists, dtype=np.int64)
        with atomic_file(index_path) as handle:
            handle.write(header + b"full" + struct.pack("<Q", lists) + sizes.astype("<u8").tobytes())
            handle.flush()
            fd = handle.fileno()
            os.ftruncate(fd, data_start + int(list_bytes.sum()))
            for start, block in source.blocks():
                owner = assignment[start : start + block.shape[0]]
                # Stable: within a list, rows stay in id order, as faiss's add stores them.
                order = np.argsort(owner, kind="stable")
                grouped = block[order]
                present, first, count = np.unique(owner[order], return_index=True, return_counts=True)
                for lst, a, c in zip(present.tolist(), first.tolist(), count.tolist(), strict=True):
                    os.pwrite(fd, grouped[a : a + c].data, int(codes_at[lst] + filled[lst] * code_size))
                    filled[lst] += c
                bar.update(block.shape[0])
            by_list = np.argsort(assignment, kind="stable").astype(np.int64)
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            for lst in np.flatnonzero(sizes).tolist():
                os.pwrite(fd, by_list[bounds[lst] : bounds[lst + 1]].data, int(ids_at[lst]))
    _check_written(index_path, n, sizes)
    return IndexInfo(kind="ivf", nlist=lists, default_nprobe=auto_nprobe(lists), train_size=sample_size)


def _check_written(path: Path, n: int, sizes: NDArray[np.int64]) -> None:
    """Read the file back as ff-render does (lists memory-mapped) and compare its list sizes."""
    written = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    invlists = faiss.extract_index_ivf(written).invlists
    assert invlists is not None
    got = np.array([invlists.list_size(i) for i in range(invlists.nlist)], dtype=np.int64)
    if written.ntotal != n or not np.array_equal(got, sizes):
        raise BundleError(f"{path}: the IVF index written does not read back as written")
