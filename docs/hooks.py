"""MkDocs hook: a page nobody listed in mkdocs.yml's nav still gets a place in it, under "Topics".

Several people add pages to docs/ at once; MkDocs would build a page missing from the nav but leave it
unreachable from the menu (and only say so at INFO level, which --strict lets through). Here every such page
is added to the "Topics" section, ordered by file name and titled by its first heading, and the section is
dropped while it is empty. Listing a page in the nav explicitly still decides its place and title.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mkdocs.structure.nav import Navigation, Section, _add_parent_links, _add_previous_and_next_links, _get_by_type
from mkdocs.structure.pages import Page

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files

TOPICS = "Topics"


def on_nav(nav: Navigation, config: MkDocsConfig, files: Files) -> Navigation:
    """Put every page that is in no nav section into the "Topics" section; drop that section if empty."""
    listed = {page.file.src_uri for page in nav.pages}
    unlisted = sorted(
        (f for f in files.documentation_pages() if f.inclusion.is_in_nav() and f.src_uri not in listed),
        key=lambda f: f.src_uri,
    )
    topics = next((item for item in nav.items if isinstance(item, Section) and item.title == TOPICS), None)
    if topics is None:
        topics = Section(TOPICS, [])
        nav.items.append(topics)
    for file in unlisted:
        page = file.page if isinstance(file.page, Page) else Page(None, file, config)
        topics.children.append(page)
    if not topics.children:
        nav.items.remove(topics)
    pages = _get_by_type(nav.items, Page)
    _add_previous_and_next_links(pages)
    _add_parent_links(nav.items)
    return Navigation(nav.items, pages)
