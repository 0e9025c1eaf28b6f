"""A copy's place in its source's XMP lineage (XMP Media Management, ``xmpMM``).

A scan that has been through Photoshop, Lightroom or Bridge carries ``xmpMM:DocumentID`` (the document, across its
saves), ``xmpMM:InstanceID`` (this save of it) and often ``xmpMM:History``. A colour copy that kept them claimed to
be the scan itself, the same save, which a catalogue or DAM that links files by these IDs takes for the original.
:func:`derived_copy` gives the copy IDs of its own and records where it came from, as an editor's "save as" does:
``xmpMM:DerivedFrom`` names the source's document and instance, ``xmpMM:OriginalDocumentID`` keeps the lineage's
root, and ``xmpMM:History`` gains a ``derived`` event (the provenance sentence) and a ``saved`` one (the new
instance, when, by Tinct). XMP with no IDs is left as it is: Tinct does not start a lineage a source never had.

The packet is edited as a DOM (``xml.dom.minidom``), which keeps each element's and attribute's prefix and every
namespace declaration where it was; the text around the root element (the ``<?xpacket?>`` wrapper) is kept byte for
byte, and what the copy adds comes out of the packet's padding where it has enough.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from xml.dom import minidom
from xml.parsers.expat import ExpatError

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMP_MM = "http://ns.adobe.com/xap/1.0/mm/"
ST_REF = "http://ns.adobe.com/xap/1.0/sType/ResourceRef#"
ST_EVT = "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
XMLNS = "http://www.w3.org/2000/xmlns/"
_PREFIXES = {XMP_MM: "xmpMM", ST_REF: "stRef", ST_EVT: "stEvt", RDF: "rdf"}
_ROOT = re.compile(rb"<(?![?!])([^\s/>]+)")  # the first element's start tag: x:xmpmeta, or rdf:RDF alone


def derived_copy(xmp: bytes, description: str, software: str, when: datetime | None = None) -> bytes:
    """``xmp``, a source's packet, as its copy's: new document and instance IDs, the source's as ``DerivedFrom``,
    and the derivation and save in its history (see the module's docstring). Unchanged where the source has no
    document or instance ID, or where its packet is not well-formed XML (kept as it came, as before)."""
    start = _ROOT.search(xmp)
    if start is None or XMP_MM.encode() not in xmp:
        return xmp
    end = xmp.rfind(b"</" + start.group(1) + b">")
    if end < 0:
        return xmp
    end += len(start.group(1)) + 3
    try:
        document = minidom.parseString(xmp[start.start():end])
    except ExpatError:
        return xmp
    descriptions = document.getElementsByTagNameNS(RDF, "Description")
    source = {name: _value(descriptions, name) for name in ("DocumentID", "InstanceID", "OriginalDocumentID")}
    if not (source["DocumentID"] or source["InstanceID"]):
        return xmp
    holder = _holder(descriptions)
    instance = f"xmp.iid:{uuid.uuid4()}"
    _set(descriptions, holder, "DocumentID", f"xmp.did:{uuid.uuid4()}")
    _set(descriptions, holder, "InstanceID", instance)
    if not source["OriginalDocumentID"] and source["DocumentID"]:
        _set(descriptions, holder, "OriginalDocumentID", source["DocumentID"])
    for old in _children(holder, XMP_MM, "DerivedFrom"):  # the source's own origin: its OriginalDocumentID stays
        holder.removeChild(old)
    _add_struct(holder, XMP_MM, "DerivedFrom", ST_REF, {
        "instanceID": source["InstanceID"], "documentID": source["DocumentID"],
        "originalDocumentID": source["OriginalDocumentID"] or source["DocumentID"]})
    stamp = (when or datetime.now(UTC)).isoformat(timespec="seconds")
    history = _history(holder)
    _add_struct(history, RDF, "li", ST_EVT, {"action": "derived", "parameters": description})
    _add_struct(history, RDF, "li", ST_EVT, {"action": "saved", "instanceID": instance, "when": stamp,
                                             "softwareAgent": software, "changed": "/"})
    edited = document.documentElement.toxml().encode("utf-8")
    return xmp[:start.start()] + edited + _less_padding(xmp[end:], len(edited) - (end - start.start()))


def _less_padding(tail: bytes, growth: int) -> bytes:
    """The text after the root element with up to ``growth`` bytes of the packet's padding taken out: what padding
    is for, so that the packet stays the size it was (a JPEG's XMP segment has 64 KB at most)."""
    padding = re.match(rb"\s*", tail).end()
    return tail[min(max(growth, 0), padding):]


def _value(descriptions: list[minidom.Element], name: str) -> str:
    """The simple ``xmpMM`` property ``name`` of any description, as an attribute or an element; "" if none."""
    for description in descriptions:
        if description.hasAttributeNS(XMP_MM, name):
            return description.getAttributeNS(XMP_MM, name).strip()
        for child in _children(description, XMP_MM, name):
            return "".join(node.data for node in child.childNodes if node.nodeType == node.TEXT_NODE).strip()
    return ""


def _holder(descriptions: list[minidom.Element]) -> minidom.Element:
    """The description that holds the source's IDs (the first with any ``xmpMM`` property), else the first."""
    for description in descriptions:
        attributes = description.attributes
        if any(attributes.item(i).namespaceURI == XMP_MM for i in range(attributes.length)) or any(
                child.nodeType == child.ELEMENT_NODE and child.namespaceURI == XMP_MM
                for child in description.childNodes):
            return description
    return descriptions[0]


def _children(element: minidom.Element, namespace: str, name: str) -> list[minidom.Element]:
    return [child for child in element.childNodes
            if child.nodeType == child.ELEMENT_NODE and child.namespaceURI == namespace and child.localName == name]


def _prefix(element: minidom.Element, namespace: str) -> str:
    """The prefix ``namespace`` is written with at ``element``: Tinct's usual one, declared on the element unless
    an ancestor binds it already (a source may bind another prefix to it, as old files' ``xapMM``)."""
    prefix = _PREFIXES[namespace]
    node: minidom.Node | None = element
    while node is not None and node.nodeType == node.ELEMENT_NODE:
        if node.getAttribute(f"xmlns:{prefix}") == namespace:
            return prefix
        node = node.parentNode
    element.setAttributeNS(XMLNS, f"xmlns:{prefix}", namespace)
    return prefix


def _add(parent: minidom.Element, namespace: str, name: str, text: str | None = None) -> minidom.Element:
    """A new element appended to ``parent``, holding ``text`` if given."""
    document = parent.ownerDocument
    element = document.createElementNS(namespace, f"{_PREFIXES[namespace]}:{name}")
    parent.appendChild(element)
    _prefix(element, namespace)
    if text is not None:
        element.appendChild(document.createTextNode(text))
    return element


def _add_struct(parent: minidom.Element, namespace: str, name: str, field_namespace: str,
                fields: dict[str, str]) -> None:
    """A struct (``rdf:parseType="Resource"``) appended to ``parent``, its non-empty fields as elements."""
    element = _add(parent, namespace, name)
    element.setAttributeNS(RDF, f"{_prefix(element, RDF)}:parseType", "Resource")
    _prefix(element, field_namespace)  # once, on the struct, not on each field
    for field, value in fields.items():
        if value:
            _add(element, field_namespace, field, value)


def _set(descriptions: list[minidom.Element], holder: minidom.Element, name: str, value: str) -> None:
    """Set the simple ``xmpMM`` property ``name`` where a description has it (as an attribute or an element), else
    as an attribute of ``holder``: a property stated twice would be two statements of it."""
    for description in descriptions:
        if description.hasAttributeNS(XMP_MM, name):
            description.setAttributeNS(XMP_MM, description.getAttributeNodeNS(XMP_MM, name).name, value)
            return
        for element in _children(description, XMP_MM, name):
            for node in list(element.childNodes):
                element.removeChild(node)
            element.appendChild(description.ownerDocument.createTextNode(value))
            return
    holder.setAttributeNS(XMP_MM, f"{_prefix(holder, XMP_MM)}:{name}", value)


def _history(description: minidom.Element) -> minidom.Element:
    """The ``rdf:Seq`` of the description's ``xmpMM:History``, made where there is none."""
    for history in _children(description, XMP_MM, "History"):
        for sequence in _children(history, RDF, "Seq"):
            return sequence
    return _add(_add(description, XMP_MM, "History"), RDF, "Seq")
