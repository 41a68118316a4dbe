"""The web package's own rules: imports point one way (nothing below imports web), every
string a page shows has its German text, and the templates carry no inline script or style
(the Content-Security-Policy would block them) and no form without its token."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import web
from web import i18n

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
TEMPLATES = sorted((WEB / "templates").rglob("*.html"))
# _("...") in templates, i18n.gettext("...") and faces' titles and labels in Python
_CALL = re.compile(r"""_\(\s*(["'])((?:(?!\1).)+)\1""")


def test_nothing_below_web_imports_it():
    offenders = []
    for package in ("coalition", "partners", "settlement"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names
                              if n == "web" or n.startswith("web.")]
    assert not offenders


def shown_strings() -> set[str]:
    found = set()
    for path in TEMPLATES:
        found |= {m.group(2) for m in _CALL.finditer(path.read_text())}
    for path in WEB.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                    node.func, "id", None)) == "gettext":
                found |= {a.value for a in node.args if isinstance(a, ast.Constant)
                          and isinstance(a.value, str)}
                found |= {v.value for a in node.args if isinstance(a, ast.IfExp)
                          for v in (a.body, a.orelse) if isinstance(v, ast.Constant)}
            # titles and labels handed to the shared pages, translated there
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in (
                    "sign_in_page", "set_password_page", "face"):
                found |= {a.value for a in node.args[1:] if isinstance(a, ast.Constant)
                          and isinstance(a.value, str) and " " in a.value}
    return found


def test_every_string_a_page_shows_has_its_german_text():
    web.load_areas()  # the console's areas add their strings when imported
    shown = shown_strings()
    assert {"Balance", "Too many failed attempts. Try again after {time}.",
            "Member sign-in"} <= shown
    # kinds and roles are looked up by value
    shown |= {"earn", "burn", "reversal", "expiry", "admin", "analyst"}
    missing = sorted(s for s in shown if s not in i18n.GERMAN)
    assert not missing


def test_templates_have_no_inline_script_or_style_and_every_form_its_token():
    for path in TEMPLATES:
        text = path.read_text()
        assert "<script" not in text and "<style" not in text and " style=" not in text, path
        assert not re.search(r"\son[a-z]+=", text), path  # no event handler attributes
        for form in re.findall(r"<form[^>]*>.*?</form>", text, flags=re.S):
            if 'method="post"' in form:
                assert "csrf_token()" in form, path
