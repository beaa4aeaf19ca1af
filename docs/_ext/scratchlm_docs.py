"""Two small Sphinx hooks for scratchlm's docstrings.

1. The house style writes examples, tables and shapes as indented blocks under a line of prose (as one
   reads them in a terminal). reStructuredText takes such a block for a block quote (or an error); this
   hook makes each one a literal block, exactly as written. Directive bodies (``.. math::``) and blocks
   already introduced by ``::`` are left alone.
2. Docstrings name objects the way the code reaches them: ``scratchlm.layers.LSTM`` (a re-export),
   ``ModelError`` (imported into the module), ``_loop`` (a method of the class or of a base class). When
   Sphinx finds no target under the name as written, this hook imports the name from where the docstring
   stands (its module, its class and that class's bases) and, if it is a real object, links to it where it
   is documented: the object itself, or the nearest documented class or module that holds it. A name that
   imports to nothing stays a broken reference, so ``-n`` still fails on a docstring pointing to nothing.
"""

import importlib
import inspect
import re

from sphinx.util.nodes import make_refnode

_BULLET = re.compile(r"^(?:[-*+] |\d+\. |#\. )")
_FIELD = re.compile(r"^:[\w ]+:(\s|$)")  # a field list's item (``:param x:``), not a role (``:meth:`x```)


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def _text_indent(line):
    """Where a line's text starts: a bullet item's continuation lines sit under its text."""
    stripped = line.lstrip(" ")
    m = _BULLET.match(stripped)
    return _indent(line) + (m.end() if m else 0)


def literal_blocks(lines):
    """The house style's indented blocks as literal blocks (in place)."""
    out = []
    prev = None  # index in out of the last non-blank line of prose
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            out.append(line)
            i += 1
            continue
        if prev is not None and _indent(line) > _text_indent(out[prev]):
            head = out[prev].rstrip()
            base = _indent(out[prev])
            if not (head.endswith("::") or head.lstrip().startswith(".. ") or _FIELD.match(head.lstrip())):
                out[prev] = head + (":" if head.endswith(":") else " ::")
                if out[-1].strip():
                    out.append("")
            # copy the block as it is, up to the first line back at (or left of) the prose
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                out.append(lines[i])
                i += 1
            if out[-1].strip():
                out.append("")
            prev = None
            continue
        out.append(line)
        prev = len(out) - 1
        i += 1
    lines[:] = out


def process_docstring(app, what, name, obj, options, lines):
    literal_blocks(lines)


_DECLARED = object()
_MISSING = object()


def _lookup(path):
    """The object a dotted path names, importing modules as needed; _MISSING if it names nothing."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        except Exception:  # noqa: BLE001 - a module that cannot import here names nothing we can link
            return _MISSING
        for attr in parts[cut:]:
            try:
                obj = inspect.getattr_static(obj, attr) if inspect.isclass(obj) else getattr(obj, attr)
            except AttributeError:
                if inspect.isclass(obj) and any(attr in vars(c).get("__annotations__", {}) for c in obj.__mro__):
                    return _DECLARED  # declared on the class (``name: type``), given a value by subclasses
                return _MISSING
        return obj
    return _MISSING


def _canonical(obj, path):
    """Where an object lives: module.qualname for classes and functions, else the path as given."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    if inspect.ismodule(obj):
        return obj.__name__
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(mod, str) and isinstance(qual, str) and "<" not in qual:
        return f"{mod}.{qual}"
    return path


def _candidates(target, modname, clsname):
    target = target.lstrip(".~")
    yield target
    if clsname and modname:
        cls = _lookup(f"{modname}.{clsname}")
        for base in inspect.getmro(cls) if inspect.isclass(cls) else ():
            yield f"{base.__module__}.{base.__qualname__}.{target}"
    if modname:
        parts = modname.split(".")
        for cut in range(len(parts), 0, -1):  # the module, then its parents (relative module names)
            yield ".".join(parts[:cut]) + "." + target


def missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    if not target.startswith(("scratchlm", ".", "~")) and not re.match(r"^[A-Za-z_][\w.]*$", target):
        return None
    domain = env.get_domain("py")
    objects = domain.objects
    modules = domain.modules if hasattr(domain, "modules") else {}
    for path in _candidates(target, node.get("py:module"), node.get("py:class")):
        if not path.startswith("scratchlm"):
            continue
        obj = _lookup(path)
        if obj is _MISSING:
            continue
        name = _canonical(obj, path)
        while name and name not in objects and name not in modules:
            name = name.rpartition(".")[0]  # the nearest documented holder: class, then module
        if not name:
            continue
        entry = objects.get(name)
        if entry is not None:
            docname, anchor = entry.docname, entry.node_id
        else:
            docname, anchor = modules[name].docname, modules[name].node_id
        return make_refnode(app.builder, node["refdoc"], docname, anchor, contnode, name)
    return None


def setup(app):
    app.connect("autodoc-process-docstring", process_docstring)
    app.connect("missing-reference", missing_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
