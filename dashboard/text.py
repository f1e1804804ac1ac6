"""Text a user supplied (file, folder, class and run names, and messages quoting them), shown as written.

Streamlit renders the text of `st.markdown`, `st.error`, `st.caption` and the like as Markdown:
a class folder named `[Log in again](https://…)` would become a live link, `![x](https://…)` an
image every viewer's browser fetches. Every ASCII punctuation character may be escaped with a
backslash in Markdown, and escaped, none of them means anything.
"""

from __future__ import annotations

import string

_SPECIAL = frozenset(string.punctuation)


def plain(text) -> str:
    """`text` with every Markdown-significant character escaped, so it shows exactly as written."""
    return "".join("\\" + char if char in _SPECIAL else char for char in str(text))
