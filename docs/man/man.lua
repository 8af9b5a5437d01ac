-- pandoc filter for bulkhead.yaml(5): the headings of docs/configuration.md move one level up
-- (## -> .SH in capitals, as man pages write them; ### -> .SS) and its "# Configuration reference"
-- title goes: the page has a NAME.
function Header(h)
  if h.level == 1 then
    return {}
  end
  h.level = h.level - 1
  if h.level == 1 then
    h.content = {pandoc.Str(pandoc.text.upper(pandoc.utils.stringify(h.content)))}
  end
  return h
end

-- No hyphenation: a key such as limits.max_headers split as "lim-its" reads as another name.
function Pandoc(doc)
  table.insert(doc.blocks, 1, pandoc.RawBlock('man', '.nh'))
  return doc
end
