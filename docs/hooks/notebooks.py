"""MkDocs hook: publish the tutorial notebooks of ``notebooks/`` as pages of the site.

The notebooks live in ``notebooks/`` at the repository root (where ``make test`` runs them with nbmake),
outside ``docs_dir``. mkdocs-jupyter renders only files that MkDocs lists among the documentation files, so
this hook adds ``notebooks/*.ipynb`` and ``notebooks/README.md`` to that list as ``notebooks/<name>``, read
in place from the repository root: nothing is copied into ``docs/``, and nothing is committed twice.

The pages keep their repository paths: ``mkdocs.yml`` names them ``notebooks/00_quickstart.ipynb`` (served at
``notebooks/00_quickstart/``) and ``notebooks/README.md`` (served at ``notebooks/``, the section's index). The
hook runs before mkdocs-jupyter's ``on_files`` (priority 100), which then wraps the notebooks as pages.
A notebook that the nav names but that is missing fails ``mkdocs build --strict``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

FOLDER = "notebooks"  # relative to the folder of mkdocs.yml; also the folder of the pages in the site


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


@event_priority(100)
def on_files(files: Files, config) -> Files:
    root = _root(config)
    source = root / FOLDER
    notebooks = sorted(source.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"docs hook: no notebook (*.ipynb) in {source}")
    readme = source / "README.md"
    for path in notebooks + ([readme] if readme.is_file() else []):
        src_uri = f"{FOLDER}/{path.name}"
        if files.get_file_from_path(src_uri) is not None:
            raise FileExistsError(f"docs hook: docs/{src_uri} would shadow {path}; remove one of them")
        files.append(File(src_uri, src_dir=str(root), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files


def on_serve(server, config, builder):
    """``mkdocs serve`` rebuilds when a notebook changes."""
    server.watch(str(_root(config) / FOLDER))
    return server
