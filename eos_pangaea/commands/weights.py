"""``eos-pangaea weights``: list, fetch, verify, import and export specialist weights."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``weights`` command and its sub-commands."""
    parser = subparsers.add_parser("weights", help="list, fetch, verify, import and export specialist weights")
    actions = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="list the specialists of the weights manifest")
    listing.add_argument("--manifest", type=Path, help="manifest YAML to read (default: the shipped one)")
    listing.add_argument("--json", action="store_true", help="print the validated entries as JSON")
    listing.set_defaults(func=_list)

    fetch = actions.add_parser(
        "fetch",
        help="download weights from the Hugging Face Hub into the cache and verify them",
        description="Download weights into the cache. The manifest does not know the file names in "
                    "pierreadorni/eos-fm, so pass --filename with the ensemble file or an "
                    "eos-pangaea-weights.json index.",
    )
    fetch.add_argument("--repo", default=None, help="hub repository OWNER/NAME (default: the manifest's)")
    fetch.add_argument("--filename", help="file to download: an ensemble file or an eos-pangaea-weights.json index")
    fetch.add_argument("--revision", help="branch, tag or commit to download (default: the manifest's); pin a commit for reproducibility")
    fetch.add_argument("--sha256", help="expected SHA-256 of --filename")
    fetch.add_argument("--force-download", action="store_true", help="download again even if cached")
    _add_common(fetch)
    fetch.set_defaults(func=_fetch)

    verify = actions.add_parser("verify", help="check the checksums and contents of local weights")
    verify.add_argument("source", nargs="?", help="directory, index, ensemble file or hf:// reference")
    verify.add_argument("--names", help="comma-separated specialists to check (default: every one the source lists)")
    verify.add_argument("--forget", metavar="KEY", help="delete the recorded checksum of KEY (hf://REPO@REV/FILE) and exit")
    _add_common(verify)
    verify.set_defaults(func=_verify)

    official = actions.add_parser("import-official", help="convert an official ensemble file into our format")
    official.add_argument("file", type=Path, help="official ensemble file: a pickled list of (in_chans, state_dict, config)")
    official.add_argument("out_dir", type=Path, help="directory to write <name>.safetensors files and an index into")
    official.add_argument("--names", help="comma-separated name of each entry, in file order (default: config['encoder_name'])")
    official.add_argument("--bands", action="append", default=[], metavar="NAME=B1,B2,...",
                          help="band names of a specialist the manifest lacks, in channel order; repeatable")
    official.add_argument("--sha256", help="expected SHA-256 of the file; checked before it is read")
    official.set_defaults(func=_import_official)

    export = actions.add_parser("export", help="write specialists from a source as a directory, one file or the official format")
    export.add_argument("source", help="directory, index, ensemble file or hf:// reference to read")
    export.add_argument("out", type=Path, help="output directory (--format directory) or file")
    export.add_argument("--names", help="comma-separated specialists to keep, e.g. those a pruned ensemble selected")
    export.add_argument("--format", choices=("directory", "file", "official"), default="directory",
                        help="directory: <name>.safetensors plus index (default); file: one safetensors file; "
                        "official: the official pickle list")
    _add_common(export)
    export.set_defaults(func=_export)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, help="cache root for downloads and recorded checksums (default: $EOS_PANGAEA_CACHE or ~/.cache/eos-pangaea)")
    parser.add_argument("--offline", action="store_true", default=None, help="use only cached downloads (also set by HF_HUB_OFFLINE=1)")
    parser.add_argument("--strict-checksums", action="store_true", help="reject files whose SHA-256 is not known in advance")


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _list(args: argparse.Namespace) -> int:
    from eos_pangaea.weights.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    if args.json:
        print(json.dumps([e.as_dict() for e in manifest.specialists], indent=2))
        return 0
    print(f"{'name':<16} {'bands':<42} {'scaling':<10} {'params':>9}  sha256")
    for entry in manifest.specialists:
        bands = ",".join(entry.bands) + (" (inferred)" if entry.bands_inferred else "")
        scaling = entry.input_scaling["method"] + ("?" if entry.input_scaling.get("inferred") else "")
        sha = entry.sha256[:12] if entry.sha256 else "unknown"
        print(f"{entry.name:<16} {bands:<42} {scaling:<10} {entry.parameters:>9}  {sha}")
    print(f"\nWeights: hf://{manifest.ensemble.repo}@{manifest.ensemble.revision}; file name "
          f"{manifest.ensemble.filename or 'unknown: ' + manifest.ensemble.note}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from eos_pangaea.weights.hub import download
    from eos_pangaea.weights.local import read_index
    from eos_pangaea.weights.manifest import load_manifest

    manifest = load_manifest()
    repo = args.repo or manifest.ensemble.repo
    revision = args.revision or manifest.ensemble.revision
    options = dict(revision=revision, cache_dir=args.cache_dir, offline=args.offline, strict_checksums=args.strict_checksums,
                   force_download=args.force_download)
    targets = []
    if args.filename:
        targets.append((args.filename, args.sha256))
    else:
        targets += [(e.source.filename, e.sha256) for e in manifest.specialists if e.source.filename and e.source.repo == repo]
        if not targets and manifest.ensemble.filename:
            targets.append((manifest.ensemble.filename, manifest.ensemble.sha256))
    if not targets:
        raise ValueError(f"The manifest names no file to download from {repo}: {manifest.ensemble.note} "
                         "Pass --filename FILE (see the repository's file list on the hub).")
    for filename, sha in targets:
        path, digest = download(repo, filename, expected_sha256=sha, **options)
        print(f"{digest}  {path}")
        if filename.endswith(".json"):
            folder = str(Path(filename).parent)
            for item in read_index(path):
                remote = item.path.name if folder == "." else f"{folder}/{item.path.name}"
                file_path, file_sha = download(repo, remote, expected_sha256=item.sha256, **options)
                print(f"{file_sha}  {file_path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from eos_pangaea.weights.loader import default_checksum_store, load_specialist_weights

    if args.forget:
        removed = default_checksum_store(args.cache_dir).forget(args.forget)
        print(f"{'Removed' if removed else 'No record of'} {args.forget}")
        return 0
    if not args.source:
        raise ValueError("Pass a SOURCE to verify, or --forget KEY.")
    specialists = _specialists_for(args.source, _split(args.names))
    loaded = load_specialist_weights(specialists, args.source, strict_checksums=args.strict_checksums,
                                     cache_dir=args.cache_dir, offline=args.offline)
    for item in loaded:
        print(f"OK {item.name:<16} file {item.file_sha256}  weights {item.weights_sha256}")
    return 0


def _import_official(args: argparse.Namespace) -> int:
    from eos_pangaea.weights.files import verify_sha256
    from eos_pangaea.weights.local import export_directory
    from eos_pangaea.weights.official import official_specialists

    if args.sha256:
        verify_sha256(args.file, args.sha256, "--sha256")
    bands = {}
    for item in args.bands:
        name, sep, values = item.partition("=")
        if not sep or not _split(values):
            raise ValueError(f"Invalid --bands {item!r}; expected NAME=B1,B2,... with the bands in channel order.")
        bands[name] = _split(values)
    built = official_specialists(args.file, names=_split(args.names), bands=bands)
    index = export_directory([s for s, _ in built], args.out_dir, extra={"imported_from": args.file.name})
    print(f"Imported {len(built)} specialists into {args.out_dir} (index {index.name})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from eos_pangaea.weights.loader import load_specialist_weights
    from eos_pangaea.weights.local import export_directory, save_ensemble_file
    from eos_pangaea.weights.official import export_official

    specialists = _specialists_for(args.source, _split(args.names))
    load_specialist_weights(specialists, args.source, strict_checksums=args.strict_checksums,
                            cache_dir=args.cache_dir, offline=args.offline)
    if args.format == "directory":
        export_directory(specialists, args.out)
    elif args.format == "file":
        save_ensemble_file(specialists, args.out)
    else:
        export_official(specialists, args.out)
    print(f"Exported {len(specialists)} specialists to {args.out} ({args.format})")
    return 0


def _specialists_for(source: str, names: list[str] | None):
    """Build randomly initialised specialists for what ``source`` holds, or for ``names`` of the manifest."""
    from eos_pangaea.specialists import Specialist, SpecialistSpec, load_specialist_specs
    from eos_pangaea.weights.files import read_weights_file
    from eos_pangaea.weights.local import ENSEMBLE_METADATA_KEY, INDEX_NAME, read_index

    path = Path(source)
    listed: list[SpecialistSpec] = []
    index = path / INDEX_NAME if path.is_dir() else path
    if index.is_file() and index.suffix == ".json":
        listed = [SpecialistSpec(f.name, f.bands, f.backbone) for f in read_index(index) if f.bands and f.backbone]
    elif path.is_file() and path.suffix == ".safetensors":
        _, metadata = read_weights_file(path)
        if ENSEMBLE_METADATA_KEY in metadata:
            listed = [SpecialistSpec(e["name"], tuple(e["bands"]), e["backbone"])
                      for e in json.loads(metadata[ENSEMBLE_METADATA_KEY])]
    if listed:
        by_name = {s.name: s for s in listed}
        unknown = [n for n in names or [] if n not in by_name]
        if unknown:
            raise ValueError(f"{source} contains no specialists {unknown}; it contains {sorted(by_name)}.")
        specs = [by_name[n] for n in names] if names else listed
    else:
        specs = load_specialist_specs(names)
    return [Specialist(spec) for spec in specs]
