"""Wikipedia `pages-articles.xml(.bz2)` dumps -> plain-text articles {"title", "text"}.

The dump is MediaWiki's export XML: <page> elements with <title>, <ns> (0 for articles),
an optional <redirect title=...>, and <revision><text> holding the wikitext. Pages are
streamed (iterparse, each page cleared after use), so a dump of any size reads in
constant memory.

Wikitext becomes the text a reader of the article sees, in three passes:

1. A linear scan removes what never carries prose, before the parser has to read it:
   comments, references (<ref>...</ref>, <ref/>, and a <ref> left unclosed), tables
   ({| ... |}, nested ones too), and every template that is not rendered below
   (infoboxes, citations, navigation boxes, maintenance tags). A page carrying a
   disambiguation template (or titled "... (disambiguation)") is skipped whole.
2. mwparserfromhell (a maintained wikitext parser) parses the rest. Links keep their text;
   file, image, media, category and interlanguage links, galleries, math and other
   non-prose tags go; bold and italic lose their quotes; headings end a paragraph and the
   sections with no prose of their own (References, Notes, See also, External links,
   Further reading, Bibliography, ...) are dropped with everything under them. Templates
   that carry text are rendered: {{convert}} as its value and unit, {{lang}}, {{nowrap}},
   {{IPA}}-like and other wrappers as their text, date templates as a date, {{circa}},
   {{frac}}, dashes and other character templates as the character.
3. Paragraphs are separated by a blank line and list items keep a line each (a list is a
   paragraph of its own), so that a list never runs on into one long "sentence".
   Punctuation left behind by a dropped template is repaired: an empty "()" (or one
   holding only separators) goes, and a space before a comma or full stop goes.

What every pass removed is counted per page (`wikitext_to_text(..., counts)`) and reported
by `page_events` as ("what", amount) pairs, next to the pages skipped and why.
"""

from __future__ import annotations

import collections
import re
import xml.etree.ElementTree as ET
from typing import Iterator, NamedTuple

from ernie3_jax.runtime import storage

_LINK_NAMESPACES = re.compile(r"^\s*:?\s*(file|image|category|media)\s*:", re.IGNORECASE)
_INTERWIKI = re.compile(r"^\s*:?\s*[a-z]{2,3}(-[a-z]+)?\s*:", re.IGNORECASE)
_DROPPED_TAGS = {"ref", "table", "gallery", "math", "chem", "ce", "timeline",
                 "syntaxhighlight", "source", "score", "references", "noinclude",
                 "includeonly", "imagemap", "graph", "mapframe", "maplink", "hiero",
                 "templatedata", "categorytree", "inputbox", "pre"}
# Sections that list sources or links rather than say something: dropped with their
# subsections (sections such as "Literature" or "Works" can be prose and stay).
DROPPED_SECTIONS = frozenset({
    "references", "reference", "notes", "note", "see also", "external links",
    "external link", "further reading", "bibliography", "bibliographies", "sources",
    "footnotes", "citations", "notes and references", "references and notes", "works cited",
    "reference literature", "gallery", "primary sources", "secondary sources",
    "other websites", "notes and citations", "citations and notes", "sources and notes",
    "sources and further reading", "external links and references",
    "references and further reading", "selected bibliography"})
DISAMBIGUATION_TEMPLATES = frozenset({
    "disambiguation", "disambig", "dab", "disamb", "disambiguation page", "hndis",
    "geodis", "numberdis", "letter disambiguation", "letter-number combination "
    "disambiguation", "place name disambiguation", "school disambiguation",
    "hospital disambiguation", "mathematical disambiguation", "species latin name "
    "disambiguation", "call sign disambiguation", "genus disambiguation",
    "human name disambiguation", "dis", "disambiguation cleanup"})

# Templates rendered as text (names lower-case, "_" read as " "). Prefixes cover families
# such as {{lang-fr}} and {{IPA-de}}.
_FIRST_PARAMETER = frozenset({
    "nowrap", "nobr", "nobreak", "small", "smaller", "big", "larger", "large", "sc",
    "smallcaps", "small caps", "abbr", "abbrlink", "em", "strong", "noitalic", "math",
    "mvar", "var", "serif", "sans-serif", "script", "tooltip", "proper name", "vr", "gloss",
    "not a typo", "typo", "flag", "flagcountry", "flagu", "ill", "interlanguage link",
    "interlanguage link multi", "nihongo", "ipa", "ipa2", "ipa audio", "audio", "ipaslink",
    "keypress", "kbd", "code", "samp", "mono", "monospace", "center", "centre",
    "quote", "blockquote", "cquote", "quotation", "quote box", "bq", "lang-en", "nastaliq",
    "linktext", "nowrap begin", "plainlist", "unbulleted list",
    "hlist", "ubl", "ubil", "sup", "sub", "ordinal", "overline", "underline", "strikethrough",
    "s", "u", "highlight", "color", "colour", "font", "font color", "resize", "midsize"})
_CHARACTERS = {
    "'": "'", "' \"": "'\"", "\" '": "\"'", "'s": "'s", "ndash": "\u2013",
    "mdash": "\u2014", "snd": " \u2013 ", "spaced ndash": " \u2013 ", "spnd": " \u2013 ",
    "spaced en dash": " \u2013 ", "nbsp": " ", "space": " ", "sp": " ", "thinsp": " ",
    "=": "=", "!": "|", "!!": "||", "middot": " \u00b7 ", "dot": " \u00b7 ",
    "\u00b7": " \u00b7 ", "okina": "\u02bb", "shy": "", "pi": "\u03c0", "times": "\u00d7",
    "x": "\u00d7", "minus": "\u2212", "plusminus": "\u00b1", "degree": "\u00b0",
    "-": "", "clear": "", "clr": "", "break": " ", "br": " ", "mdashb": "\u2014",
    "spaces": " "}
_DATE_TEMPLATES = frozenset({
    "birth date", "death date", "birth date and age", "death date and age", "start date",
    "end date", "date", "dob", "bda", "dda", "film date", "start date and age",
    "end date and age", "birth-date", "death-date", "birth year and age",
    "death year and age", "start and end dates", "release date", "filmdate"})
_RANGE_WORDS = frozenset({"-", "\u2013", "to", "and", "or", "by", "x", "+/-", "\u00b1",
                          "to(-)", "&", "and(-)", "or(-)", "to about", "-to-", "+",
                          "xx", "*"})
_UNITS = {"sqkm": "km\u00b2", "km2": "km\u00b2", "sqmi": "sq mi", "sqft": "sq ft",
          "sqm": "m\u00b2", "m2": "m\u00b2", "ha": "ha", "acre": "acres", "km3": "km\u00b3",
          "cuft": "cu ft", "cumi": "cu mi", "m3": "m\u00b3", "C": "\u00b0C", "F": "\u00b0F",
          "K": "K", "km/h": "km/h", "mph": "mph", "kph": "km/h", "lb": "lb", "kg": "kg",
          "ft": "ft", "m": "m", "km": "km", "mi": "mi", "in": "in", "cm": "cm", "mm": "mm",
          "nmi": "nmi", "yd": "yd", "t": "t", "LT": "long tons", "ST": "short tons",
          "l": "l", "L": "L", "USgal": "US gal", "impgal": "imp gal", "m/s": "m/s",
          "ft/s": "ft/s", "km/s": "km/s", "hp": "hp", "kW": "kW", "MW": "MW", "GW": "GW",
          "ftm": "fathoms", "oz": "oz", "g": "g", "e6km2": "million km\u00b2",
          "e6sqkm": "million km\u00b2", "e6sqmi": "million sq mi", "e6mi2": "million sq mi",
          "e3km3": "thousand km\u00b3", "e6km3": "million km\u00b3", "e6acre": "million acres",
          "e3acre": "thousand acres", "e6t": "million tonnes", "e6ST": "million short tons",
          "e6LT": "million long tons", "e9m3": "billion m\u00b3", "e3km2": "thousand km\u00b2",
          "e3sqmi": "thousand sq mi", "e3mi": "thousand mi", "e3km": "thousand km",
          "e6mi": "million mi", "e6km": "million km", "e9km": "billion km", "AU": "AU",
          "ly": "light-years", "pc": "pc", "kn": "knots", "mbar": "mbar", "inHg": "inHg",
          "psi": "psi", "kPa": "kPa", "MPa": "MPa", "GPa": "GPa", "lk": "links", "ch": "chains",
          "furlong": "furlongs", "ton": "tons", "tonne": "tonnes", "uS": "\u00b5S"}
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_IPAC_LABELS = frozenset({"lang", "local", "pron", "us", "uk", "audio", "ipa", "en",
                          "ca", "au", "nz", "ie", "sa", "in", "also", "or", "-", "ame", "bre"})

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_REF = re.compile(r"<ref\b[^>]*?/>|<ref\b[^>]*>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
_OPEN_REF = re.compile(r"<ref\b[^>]*>|</ref\s*>", re.IGNORECASE)
_REFERENCES = re.compile(r"<references\b[^>]*?/>|<references\b[^>]*>.*?</references\s*>",
                         re.DOTALL | re.IGNORECASE)
_BRACES = re.compile(r"\{\{|\}\}")
_FILE_LINK = re.compile(r"\[\[\s*:?\s*(?:file|image|media)\s*:", re.IGNORECASE)
_BRACKETS = re.compile(r"\[\[|\]\]")
_CITATION_LINE = re.compile(r"\b(?:ISBN|ISSN|LCCN|OCLC|doi:|JSTOR|Bibcode|PMID)\b")
_TABLE_LINE = re.compile(r"^[ \t:]*(\{\||\|\})", re.MULTILINE)
_BULLET = "\x02"
_EMPTY_BRACKETS = re.compile(
    r"[ \t]*\((?:[ \t,;:\u2013\u2014-]|or|and)*\)|[ \t]*\[[ \t,;]*\]")
_OPEN_BRACKET_SEPARATOR = re.compile(r"\([ \t]*[,;:][ \t]*")
_SEPARATOR_CLOSE_BRACKET = re.compile(r"[ \t]*[,;:][ \t]*\)")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"[ \t]+(?=[,.;:!?%])(?!\.\.)")
_DOUBLE_SEPARATOR = re.compile(r"([,;])(?:[ \t]*[,;])+")
_QUOTES = re.compile(r"'{2,}")
# A link with no link, template or bracket inside it: [[target]] or [[target|text]].
_SIMPLE_LINK = re.compile(r"\[\[([^\[\]{}|\n]*)(?:\|([^\[\]{}\n]*))?\]\]")


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


# ------------------------------------------------------------------ pass 1: the scan


def _template_name(source: str) -> str:
  """Normalised name of the template whose source ("{{name|...}}") starts `source`."""
  end = len(source)
  for stop in ("|", "}}", "\n"):
    i = source.find(stop, 2)
    if i != -1 and i < end:
      end = i
  name = source[2:end].strip().replace("_", " ")
  name = re.sub(r"\s+", " ", name).lower()
  if name.startswith("template:"):
    name = name[9:].strip()
  return name


def _rendered(name: str) -> bool:
  return (name in _FIRST_PARAMETER or name in _CHARACTERS or name in _DATE_TEMPLATES
          or name in ("convert", "cvt", "lang", "circa", "c.", "floruit", "fl.", "as of",
                      "frac", "sfrac", "fraction", "us$", "lit", "literally", "sic",
                      "sortname", "ipac-en", "respell", "nihongo2", "angbr", "lang-x",
                      "transl", "transliteration", "chem", "nts", "ntsh", "val", "e",
                      "hms", "uss", "hmnzs", "rtl-lang", "simplenuclide2", "nuclide2")
          or name.startswith(("lang-", "ipa-", "ipac-")))


def _drop_templates(text: str, counts) -> tuple[str, bool]:
  """Removes every top-level template that `_rendered` does not know; returns the text
  and whether a disambiguation template was among them."""
  out, depth, start, last, disambiguation = [], 0, 0, 0, False
  for match in _BRACES.finditer(text):
    if match.group() == "{{":
      if depth == 0:
        start = match.start()
      depth += 1
    elif depth:
      depth -= 1
      if depth == 0:
        name = _template_name(text[start:start + 200])
        if name in DISAMBIGUATION_TEMPLATES or name.endswith(" disambiguation"):
          disambiguation = True
        if not _rendered(name):
          out.append(text[last:start])
          last = match.end()
          counts["templates dropped"] += 1
  if depth:  # an unclosed "{{": nothing after it is prose the parser could place
    out.append(text[last:start])
    counts["unclosed templates cut"] += 1
    last = len(text)
  out.append(text[last:])
  return "".join(out), disambiguation


def _drop_file_links(text: str, counts) -> str:
  """Removes [[File:...]] and [[Image:...]] links, captions and nested links included (the
  parser loses track of one whose caption holds unbalanced quotes)."""
  out, last = [], 0
  match = _FILE_LINK.search(text)
  while match:
    depth, end = 0, len(text)
    for bracket in _BRACKETS.finditer(text, match.start()):
      depth += 1 if bracket.group() == "[[" else -1
      if depth == 0:
        end = bracket.end()
        break
    out.append(text[last:match.start()])
    counts["file links removed"] += 1
    last = end
    match = _FILE_LINK.search(text, end)
  out.append(text[last:])
  return "".join(out)


def _drop_tables(text: str, counts) -> str:
  """Removes {| ... |} tables (nested ones with them) line by line."""
  if "{|" not in text:
    return text
  out, depth, last = [], 0, 0
  for match in _TABLE_LINE.finditer(text):
    if match.group(1) == "{|":
      if depth == 0:
        out.append(text[last:match.start()])
        counts["tables removed"] += 1
      depth += 1
    elif depth:
      depth -= 1
      if depth == 0:
        end = text.find("\n", match.end())
        last = len(text) if end == -1 else end
  if depth == 0:
    out.append(text[last:])
  return "".join(out)


def _simple_link(match, counts) -> str:
  target, text = match.group(1), match.group(2)
  if _LINK_NAMESPACES.match(target):
    counts["category and media links removed"] += 1
    return ""
  if text is None and _INTERWIKI.match(target):
    counts["interlanguage links removed"] += 1
    return ""
  if text:
    return text
  return target.lstrip(": ").split("#")[0] or target


def _scan(wikitext: str, counts) -> tuple[str, bool]:
  text = _COMMENT.sub("", wikitext)
  text, n = _REFERENCES.subn("", text)
  counts["reference lists removed"] += n
  text, n = _REF.subn("", text)
  counts["references removed"] += n
  text, n = _OPEN_REF.subn("", text)
  counts["unclosed reference tags removed"] += n
  text, disambiguation = _drop_templates(text, counts)
  text = _drop_tables(_drop_file_links(text, counts), counts)
  # Bold and italic quotes go before parsing: an unbalanced one would make the parser
  # misread what follows. Plain links become their text here, which spares the parser
  # most of its work; links holding templates or other links are left to it.
  text = _QUOTES.sub("", text)
  text = _SIMPLE_LINK.sub(lambda m: _simple_link(m, counts), text)
  return text, disambiguation


# ------------------------------------------------------------------ pass 2: the parser


def _params(template, render) -> tuple[list[str], dict[str, str]]:
  positional, named = [], {}
  for param in template.params:
    value = re.sub(r"\s+", " ", render(param.value)).strip()
    if param.showkey:
      named[str(param.name).strip().lower()] = value
    else:
      positional.append(value)
  return positional, named


def _date(parts: list[str], named: dict[str, str]) -> str:
  numbers = [p for p in parts if p.isdigit()][:3]
  if not numbers:
    return parts[0] if parts else ""
  year = numbers[0]
  month = int(numbers[1]) if len(numbers) > 1 and 1 <= int(numbers[1]) <= 12 else 0
  day = str(int(numbers[2])) if len(numbers) > 2 else ""
  if not month:
    return year
  if not day:
    return f"{_MONTHS[month - 1]} {year}"
  if named.get("mf", "").lower() in ("y", "yes"):
    return f"{_MONTHS[month - 1]} {day}, {year}"
  return f"{day} {_MONTHS[month - 1]} {year}"


def _convert(parts: list[str]) -> str:
  if not parts:
    return ""
  value, rest = parts[0], parts[1:]
  while len(rest) >= 2 and rest[0].lower() in _RANGE_WORDS:
    word = rest[0] if rest[0] not in ("-", "\u2013") else "\u2013"
    value = f"{value}{word}{rest[1]}" if word == "\u2013" else f"{value} {word} {rest[1]}"
    rest = rest[2:]
  unit = rest[0] if rest else ""
  return f"{value} {_UNITS.get(unit, unit)}".strip()


def _template_text(template, render, counts) -> str:
  """The text a rendered template shows (templates `_rendered` accepts)."""
  name = _template_name(str(template)[:200])
  if name in _CHARACTERS:
    return _CHARACTERS[name]
  parts, named = _params(template, render)
  counts["templates rendered"] += 1
  if name in ("convert", "cvt"):
    return _convert(parts)
  if name in _DATE_TEMPLATES:
    return _date(parts, named)  # "death date and age" starts with the death date
  if name in ("lang", "lang-x"):
    return parts[1] if len(parts) > 1 else ""
  if name.startswith("ipac-") or name == "respell":
    sounds = [p for p in parts if p.lower() not in _IPAC_LABELS]
    if name == "respell":
      return "-".join(sounds)
    return "/" + "".join(sounds).replace("_", " ") + "/"  # "_" is IPAc's space
  if name == "chem":  # {{chem|H|2|O}}
    return "".join(parts)
  if name in ("nts", "ntsh"):  # a number with a sort key
    return parts[0] if parts else ""
  if name == "val":  # {{val|1.23|e=5|u=m}}
    exponent = f"\u00d710^{named['e']}" if named.get("e") else ""
    unit = named.get("u", named.get("ul", ""))
    return (parts[0] if parts else "") + exponent + (f" {unit}" if unit else "")
  if name == "e":  # {{e|7}}: times ten to the 7
    return f"\u00d710^{parts[0]}" if parts else ""
  if name in ("hms", "uss", "hmnzs"):
    return " ".join([name.upper()] + parts[:1])
  if name == "rtl-lang":
    return parts[1] if len(parts) > 1 else ""
  if name in ("simplenuclide2", "nuclide2"):  # {{SimpleNuclide2|Carbon|14}}
    return f"{parts[0].lower()}-{parts[1]}" if len(parts) > 1 else "".join(parts)
  if name in ("circa", "c."):
    return ("c. " + parts[0]) if parts else "c."
  if name in ("floruit", "fl."):
    return ("fl. " + parts[0]) if parts else "fl."
  if name == "as of":
    return "As of " + _date(parts, named) if parts else ""
  if name in ("frac", "sfrac", "fraction"):
    if len(parts) == 3:
      return f"{parts[0]} {parts[1]}/{parts[2]}"
    return "/".join(parts) if len(parts) == 2 else (f"1/{parts[0]}" if parts else "")
  if name == "us$":
    return "US$" + (parts[0] if parts else "")
  if name in ("lit", "literally"):
    return "lit. " + ", ".join(f'"{p}"' for p in parts) if parts else ""
  if name == "sic":
    return parts[-1] if parts else ""
  if name == "sortname":
    return " ".join(parts[:2])
  if name in ("quote", "blockquote", "cquote", "quotation", "quote box", "bq"):
    return named.get("text", named.get("quote", parts[0] if parts else ""))
  if name in ("ill", "interlanguage link", "interlanguage link multi"):
    return named.get("lt", parts[0] if parts else "")
  if name in ("resize", "font color", "color", "colour", "highlight", "transl",
              "transliteration"):
    return parts[-1] if parts else named.get("text", "")
  if name in ("plainlist", "unbulleted list", "hlist", "ubl", "ubil"):
    return ", ".join(p for p in parts if p)
  if parts:
    return parts[0]
  return named.get("text", "")


def _section_title(heading) -> str:
  return re.sub(r"\s+", " ", heading.title.strip_code()).strip().lower()


def _render_nodes(nodes_, out: list[str], counts) -> None:
  nodes = _nodes()

  def render(code) -> str:
    inner: list[str] = []
    _render_nodes(code.nodes, inner, counts)
    return "".join(inner)

  for node in nodes_:
    if isinstance(node, nodes.Text):
      out.append(node.value)
    elif isinstance(node, nodes.Wikilink):
      target = str(node.title)
      if _LINK_NAMESPACES.match(target):
        counts["category and media links removed"] += 1
      elif _INTERWIKI.match(target) and not node.text:
        counts["interlanguage links removed"] += 1
      elif node.text is not None:
        out.append(render(node.text))
      else:
        out.append(render(node.title).lstrip(":").split("#")[0] or render(node.title))
    elif isinstance(node, nodes.Template):
      out.append(_template_text(node, render, counts))
    elif isinstance(node, nodes.Tag):
      tag = str(node.tag).lower()
      if tag in _DROPPED_TAGS:
        counts[f"<{tag}> removed"] += 1
      elif tag in ("li", "dt", "dd") and node.wiki_markup:
        out.append(_BULLET)
      elif tag in ("br", "hr"):
        out.append(" ")
      elif node.contents is not None:
        _render_nodes(node.contents.nodes, out, counts)
    elif isinstance(node, nodes.HTMLEntity):
      out.append(node.normalize())
    elif isinstance(node, nodes.ExternalLink):
      if node.title is not None:
        out.append(render(node.title))
      else:
        counts["bare URLs removed"] += 1
    elif isinstance(node, nodes.Heading):
      out.append("\n\n")
    # Comments and template arguments ({{{1}}}) carry no text.


def _nodes():
  import mwparserfromhell.nodes  # pylint: disable=g-import-not-at-top
  return mwparserfromhell.nodes


def _render_article(code, counts) -> str:
  """Top level: headings open sections; the non-prose ones are skipped whole."""
  nodes = _nodes()
  out: list[str] = []
  skip_level = 0
  run: list = []
  for node in code.nodes:
    if isinstance(node, nodes.Heading):
      if not skip_level:
        _render_nodes(run, out, counts)
      run = []
      if skip_level and node.level > skip_level:
        continue
      skip_level = 0
      if _section_title(node) in DROPPED_SECTIONS:
        skip_level = node.level
        counts["sections removed (references, see also, ...)"] += 1
      out.append("\n\n")
    else:
      run.append(node)
  if not skip_level:
    _render_nodes(run, out, counts)
  return "".join(out)


# ------------------------------------------------------------------ pass 3: the layout


def _tidy(text: str, counts) -> str:
  """Repairs what a dropped template leaves behind (no pattern crosses a line)."""
  text, n = _EMPTY_BRACKETS.subn("", text)
  counts["empty brackets removed"] += n
  text = _OPEN_BRACKET_SEPARATOR.sub("(", text)
  text = _SEPARATOR_CLOSE_BRACKET.sub(")", text)
  text = _DOUBLE_SEPARATOR.sub(r"\1", text)
  return _SPACE_BEFORE_PUNCTUATION.sub("", text.replace("\t", " "))


def _layout(text: str, counts) -> str:
  paragraphs = []
  for block in re.split(r"\n\s*\n", _tidy(text, counts)):
    prose, items = [], []
    for line in block.split("\n"):
      is_item = line.lstrip().startswith(_BULLET) or line.startswith((":", ";"))
      line = " ".join(line.replace(_BULLET, " ").lstrip(":;").split()).strip(" ,;")
      if not line:
        continue
      if is_item and _CITATION_LINE.search(line):
        counts["bibliographic list items removed"] += 1
        continue
      if is_item:
        if prose:
          paragraphs.append(" ".join(prose))
          prose = []
        items.append(line)
      else:
        if items:
          paragraphs.append("\n".join(items))
          items = []
        prose.append(line)
    if prose:
      paragraphs.append(" ".join(prose))
    if items:
      counts["list items kept as lines"] += len(items)
      paragraphs.append("\n".join(items))
  return "\n\n".join(paragraphs)


def wikitext_to_text(wikitext: str, counts: collections.Counter | None = None) -> str:
  """Plain text of an article's wikitext (see the module docstring); `counts`, if given,
  receives how many of each kind of markup went."""
  counts = collections.Counter() if counts is None else counts
  text, disambiguation = _scan(wikitext, counts)
  if disambiguation:
    counts["disambiguation"] += 1
    return ""
  return _parsed_text(text, counts)


def _parsed_text(text: str, counts) -> str:
  import mwparserfromhell  # pylint: disable=g-import-not-at-top
  return _layout(_render_article(mwparserfromhell.parse(text), counts), counts)


def is_disambiguation(page: Page) -> bool:
  return page.title.endswith("(disambiguation)")


def page_events(page: Page) -> Iterator[tuple[str, object]]:
  """("article", (title, text)) for an article that keeps text, a ("count", event) saying
  what happened to the page (read, or skipped and why), and ("count", (what, amount))
  pairs for the markup its conversion removed."""
  if page.redirect:
    yield "count", "pages skipped: redirect"
    return
  if page.namespace != 0:
    yield "count", f"pages skipped: namespace {page.namespace}"
    return
  counts: collections.Counter = collections.Counter()
  text = "" if is_disambiguation(page) else wikitext_to_text(page.wikitext, counts)
  if is_disambiguation(page) or counts.pop("disambiguation", 0):
    yield "count", "pages skipped: disambiguation"
    return
  for what, amount in sorted(counts.items()):
    if amount:
      yield "count", (f"wikitext: {what}", amount)
  if text:
    yield "count", "articles read"
    yield "article", (page.title, text)
  else:
    yield "count", "pages skipped: no text after markup removal"


def _page_events_list(page: tuple) -> list:
  return list(page_events(Page(*page)))


def extract(path: str, workers: int = 1, chunksize: int = 8
            ) -> Iterator[tuple[str, object]]:
  """`page_events` of every page of a dump, in file order; `workers` > 1 converts pages
  in that many processes (the reader stays in this one)."""
  pages = map(tuple, read_pages(path))
  if workers <= 1:
    for page in pages:
      yield from _page_events_list(page)
    return
  import multiprocessing  # pylint: disable=g-import-not-at-top
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    for events in pool.imap(_page_events_list, pages, chunksize):
      yield from events
