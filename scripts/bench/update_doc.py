#!/usr/bin/env python3
"""Replace the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in a markdown file.

    update_doc.py DOC NAME CONTENT_FILE
"""
import re
import sys

doc, name, content_file = sys.argv[1:4]
text = open(doc, encoding="utf-8").read()
content = open(content_file, encoding="utf-8").read().strip("\n")
pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
if not pattern.search(text):
    sys.exit(f"{doc}: no <!-- bench:{name} --> section")
text = pattern.sub(lambda m: m.group(1) + "\n" + content + "\n" + m.group(2), text)
open(doc, "w", encoding="utf-8").write(text)
