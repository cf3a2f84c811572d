"""Wikipedia `pages-articles.xml(.bz2)` dumps -> plain-text articles {"title", "text"}.

The dump is MediaWiki's export XML: <page> elements with <title>, <ns> (0 for articles),
an optional <redirect title=...>, and <revision><text> holding the wikitext. Pages are
streamed (iterparse, each page cleared after use), so a dump of any size reads in
constant memory.

Wikitext becomes plain text with mwparserfromhell (a maintained wikitext parser; it
installs from PyPI as a wheel): templates, references, tables, comments, files,
categories, interwiki links and headings are removed, links keep their text, lists and
bold/italic marks lose their markup, and paragraphs stay separated by a blank line.
Redirects, pages outside the article namespace and pages that keep no text are counted
and skipped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Iterator, NamedTuple

from ernie3_jax.runtime import storage

_LINK_NAMESPACES = re.compile(r"^\s*:?\s*(file|image|category|media)\s*:", re.IGNORECASE)
_INTERWIKI = re.compile(r"^\s*:?\s*[a-z]{2,3}(-[a-z]+)?\s*:", re.IGNORECASE)
_DROPPED_TAGS = {"ref", "table", "gallery", "math", "timeline", "syntaxhighlight", "score",
                 "references", "noinclude", "includeonly", "imagemap"}


class WikipediaDumpError(ValueError):
  """A dump that cannot be read; names the file and where."""


class Page(NamedTuple):
  title: str
  namespace: int
  redirect: bool
  wikitext: str


def _local(tag: str) -> str:
  return tag.rsplit("}", 1)[-1]


def read_pages(path: str) -> Iterator[Page]:
  """Every <page> of a .xml or .xml.bz2 dump, in file order."""
  pages = 0
  try:
    with storage.open_decompressed(path, "rb") as f:
      title = ns = text = None
      redirect = False
      for event, element in ET.iterparse(f, events=("end",)):
        name = _local(element.tag)
        if name == "title":
          title = element.text or ""
        elif name == "ns":
          ns = int(element.text or 0)
        elif name == "redirect":
          redirect = True
        elif name == "text":
          text = element.text or ""
        elif name == "page":
          pages += 1
          yield Page(title or "", ns or 0, redirect, text or "")
          title = ns = text = None
          redirect = False
          element.clear()
        del event
  except (ET.ParseError, EOFError, OSError) as e:
    raise WikipediaDumpError(f"{path}: unreadable after page {pages} ({type(e).__name__}: "
                             f"{e}); is the file truncated or corrupt?") from e


def wikitext_to_text(wikitext: str) -> str:
  """Plain text of an article's wikitext (see the module docstring)."""
  import mwparserfromhell  # pylint: disable=g-import-not-at-top
  code = mwparserfromhell.parse(wikitext)
  for node in list(code.nodes):
    _drop_markup(code, node)
  text = code.strip_code(normalize=True, collapse=True)
  paragraphs = []
  for block in re.split(r"\n\s*\n", text):
    lines = [re.sub(r"^[*#:;]+\s*", "", l).strip() for l in block.splitlines()]
    block = " ".join(l for l in lines if l)
    if block:
      paragraphs.append(re.sub(r"\s+", " ", block))
  return "\n\n".join(paragraphs)


def _drop_markup(code, node) -> None:
  """Removes a node that carries no prose (recursing into the ones that keep theirs)."""
  import mwparserfromhell.nodes as nodes  # pylint: disable=g-import-not-at-top
  if isinstance(node, (nodes.Template, nodes.Comment, nodes.Heading, nodes.Argument)):
    code.remove(node)
  elif isinstance(node, nodes.Tag) and str(node.tag).lower() in _DROPPED_TAGS:
    code.remove(node)
  elif isinstance(node, nodes.Wikilink):
    target = str(node.title)
    if _LINK_NAMESPACES.match(target) or (_INTERWIKI.match(target) and not node.text):
      code.remove(node)
  elif isinstance(node, nodes.Tag) and node.contents is not None:
    for child in list(node.contents.nodes):
      _drop_markup(node.contents, child)


def page_events(page: Page) -> Iterator[tuple[str, object]]:
  """("article", (title, text)) for an article that keeps text, and a ("count", event)
  saying what happened to the page (read, or skipped and why)."""
  if page.redirect:
    yield "count", "pages skipped: redirect"
  elif page.namespace != 0:
    yield "count", f"pages skipped: namespace {page.namespace}"
  else:
    text = wikitext_to_text(page.wikitext)
    if text:
      yield "count", "articles read"
      yield "article", (page.title, text)
    else:
      yield "count", "pages skipped: no text after markup removal"
