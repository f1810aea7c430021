"""Find off-platform contact details (emails, phones, links, messenger/payment handles) in chat text
and mask them, so a marketplace can flag attempts to take a conversation (and its fees) elsewhere."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["KINDS", "MASKS", "ContactFinding", "find_contacts", "mask_contacts"]

KINDS: tuple[str, ...] = ("email", "phone", "link", "handle")

MASKS: Mapping[str, str] = MappingProxyType(
    {
        "email": "[email hidden]",
        "phone": "[phone hidden]",
        "link": "[link hidden]",
        "handle": "[contact hidden]",
    }
)

# When two detectors claim spans of equal length, the more specific kind names the merged finding.
_KIND_RANK: Mapping[str, int] = MappingProxyType({"email": 3, "link": 2, "phone": 1, "handle": 0})


@dataclass(frozen=True)
class ContactFinding:
    kind: str  # one of KINDS
    start: int  # offset into the original text
    end: int  # exclusive
    text: str  # the original text[start:end]

    def __post_init__(self) -> None:
        if self.kind not in MASKS:
            raise ValueError(f"unknown contact kind {self.kind!r}")
        if not 0 <= self.start < self.end:
            raise ValueError(f"bad span {self.start}..{self.end}")


# A span in normalised-text coordinates, before it is mapped back to the original text.
_Span = tuple[int, int, str]

# ---------------------------------------------------------------------------------------------------
# Normalisation: detectors see NFKC text without invisible characters, findings point into the original.
# ---------------------------------------------------------------------------------------------------

# NFKC leaves these look-alikes alone, and people use them to dodge a plain "." or "-".
_FOLD: Mapping[str, str] = MappingProxyType(
    {
        "\u3002": ".",  # ideographic full stop
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",  # minus sign
    }
)
# Format characters (zero-width space/joiners, word joiner, BOM, bidi marks, soft hyphen) and combining
# marks (strike-through, keycap, variation selectors) are invisible noise spliced into contacts to break
# naive matching; dropping them costs nothing for detection.
_DROPPED_CATEGORIES = frozenset({"Cf", "Mn", "Me"})


def _normalise(text: str) -> tuple[str, list[int] | None, list[int] | None]:
    """The detection view of text plus, per normalised character, its original start and end offsets.

    Normalising character by character (rather than the whole string at once) is what keeps an exact
    offset map even though NFKC may turn one character into several; None maps mean "identity"."""
    if text.isascii():  # the common case: NFKC is the identity and nothing is invisible
        return text, None, None
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for index, char in enumerate(text):
        if char.isascii():
            out.append(char)
            starts.append(index)
            ends.append(index + 1)
            continue
        if unicodedata.category(char) in _DROPPED_CATEGORIES:
            continue
        for piece in unicodedata.normalize("NFKC", char):
            if unicodedata.category(piece) in _DROPPED_CATEGORIES:
                continue
            out.append(_FOLD.get(piece, piece))
            starts.append(index)
            ends.append(index + 1)
    return "".join(out), starts, ends


# ---------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# TLDs that are safe to accept on a bare "name.tld": not English words that turn a missing space after a
# full stop ("done.It") into a link, and not file extensions.
_STRONG_TLDS = _words(
    """
    com net org edu gov io co info biz app dev xyz online site store shop tech ly gg tv fm ws gl ee
    uk de fr ru ua nl es ca au br ch jp cn eu kz se dk fi ie nz za mx ar cl pe ve tr ir il gr cz sk hu
    ro bg hr lt lv by ge az uz kg vn th ph sg hk tw kr pk bd lk ng ke eg ma ae sa qa su рф
    pro link click live page blog email top club space website cloud digital agency studio design media
    news world life today social chat team tools works zone
    """
)
# Real TLDs that are also everyday words: only a link with a path ("t.me/x"), "www." or a scheme.
_WEAK_TLDS = _words("me in it at be to us is so do my no am as la im id ac")
# Common file extensions: "logo.psd", "brief.pdf", "logo@2x.png", "main.rs" are files, not sites.
_FILE_EXTS = _words(
    """
    png jpg jpeg gif bmp tif tiff webp svg ico heic heif raw psd ai eps indd pdf doc docx xls xlsx ppt
    pptx odt ods odp txt rtf csv tsv json xml yml yaml toml ini cfg conf html htm css scss sass less js
    jsx ts tsx mjs py pyc rb php java kt swift go rs c cpp h hpp cs sh bat ps1 md rst log sql db sqlite
    zip rar 7z tar gz tgz bz2 xz mp3 mp4 m4a m4v mov avi mkv wmv wav flac aac ogg webm fig sketch xd ttf
    otf woff woff2 eot exe msi dmg apk aab ipa iso bin dwg dxf stl obj fbx blend c4d max aep prproj ps
    pl cc lock
    """
)
# File-extension TLDs that still make a link when the text carries a path ("studio.ai/pricing").
_PATH_TLDS = _STRONG_TLDS | _WEAK_TLDS | _words("ai sh md ps py pl rs mov zip cc cs ms")
# Contact shorteners whose bare host is already the invitation.
_CONTACT_HOSTS = _words(
    "t.me telegram.me wa.me wa.link m.me ig.me vk.me paypal.me venmo.me cash.app bit.ly tinyurl.com "
    "goo.gl linktr.ee discord.gg calendly.com"
)
# Framework and product names spelled like domains that developers mention in every other message.
_TECH_NAMES = _words("asp.net ado.net vb.net socket.io")
# "john at gmail" with no TLD is still an address at these providers.
_MAIL_PROVIDERS = _words("gmail googlemail yahoo hotmail outlook icloud protonmail proton aol gmx yandex zoho")
# Words that precede a plain " at " in ordinary sentences ("look at", "meet me at"), not a mailbox name.
_NOT_MAILBOXES = _words(
    """
    look looking looked me us you him her them it is am are was were be been here there meet see arrive
    arrived work works worked working stay stayed live lives living available reach contact email mail
    write message call good great best bad done home back up out all that this what and or but not
    """
)

# ---------------------------------------------------------------------------------------------------
# Emails and links
# ---------------------------------------------------------------------------------------------------

# A separator between domain labels: ".", " . ", "(dot)", "[.]", " dot ".
_SEP = r"(?:[ \t]*+[(\[{<][ \t]*+(?:dot|\.)[ \t]*+[)\]}>][ \t]*+|[ \t]++dot[ \t]++|[ \t]++\.[ \t]++|\.)"
_SEP_RE = re.compile(_SEP, re.IGNORECASE)
_LABEL_RE = re.compile(r"[\w\-]++")

# Possessive quantifiers throughout: every repetition is deterministic, so no input can make the regex
# engine backtrack through exponentially many ways of splitting the same run of characters.
_EMAIL_RE = re.compile(
    r"(?<![\w.%+\-])(?P<local>[\w.%+\-]++)"
    r"(?P<at>[ \t]*+(?:[(\[{<][ \t]*+(?:at|@)[ \t]*+[)\]}>]|@)[ \t]*+|[ \t]++at[ \t]++)"
    rf"(?P<domain>[\w\-]++(?:{_SEP}[\w\-]++)*+)",
    re.IGNORECASE,
)
_SCHEME_URL_RE = re.compile(r"(?<!\w)(?:h[tx]{2}ps?|ftp)://[^\s<>\"'`]++", re.IGNORECASE)
_BARE_DOMAIN_RE = re.compile(
    r"(?<![\w.@\-/\\])(?P<domain>[\w\-]++(?:\.[\w\-]++)++)(?P<path>[/?#][^\s<>\"'`]*+)?", re.IGNORECASE
)
_OBFUSCATED_DOMAIN_RE = re.compile(rf"(?<![\w.@\-/\\])[\w\-]++(?:{_SEP}[\w\-]++)++", re.IGNORECASE)
_TRAILING_PUNCT = ".,;:!?'\"*"
_CLOSERS: Mapping[str, str] = MappingProxyType({")": "(", "]": "[", "}": "{"})


def _labels(norm: str, start: int, end: int) -> tuple[list[tuple[int, int]], int]:
    """Label spans of a dotted run, and the index of the first obfuscated separator (anything but a
    plain "."), len(labels) if there is none: labels[k] follows an obfuscation iff that index < k."""
    labels: list[tuple[int, int]] = []
    first_obfuscated = -1
    pos = start
    while pos < end:
        label = _LABEL_RE.match(norm, pos, end)
        if label is None:
            break
        labels.append(label.span())
        sep = _SEP_RE.match(norm, label.end(), end)
        if sep is None:
            break
        if first_obfuscated < 0 and sep.group() != ".":
            first_obfuscated = len(labels) - 1
        pos = sep.end()
    return labels, first_obfuscated if first_obfuscated >= 0 else len(labels)


def _is_plain_tld(label: str) -> bool:
    return label.isalpha() and 2 <= len(label) <= 24 and label.lower() not in _FILE_EXTS


def _find_emails(norm: str) -> list[_Span]:
    found: list[_Span] = []
    pos = 0
    while (match := _EMAIL_RE.search(norm, pos)) is not None:
        # Resume right after the local part, not after the whole match: in "me at john@gmail.com" the
        # rejected "me at john" must not swallow the real address that starts inside it.
        pos = match.end("local")
        local_start = match.start("local")
        local = match.group("local")
        while local.startswith("."):
            local, local_start = local[1:], local_start + 1
        if not any(ch.isalnum() for ch in local):
            continue
        at = match.group("at")
        at_core = at.strip(" \t").lower()
        if at == "@":
            form = "plain"
        elif at_core == "at":
            form = "word"
            if len(local) < 2 or local.lower() in _NOT_MAILBOXES or not any(ch.isalpha() for ch in local):
                continue
        else:
            form = "spaced"
        labels, first_obfuscated = _labels(norm, match.start("domain"), match.end("domain"))
        end = _email_domain_end(norm, labels, first_obfuscated, form)
        if end is not None:
            found.append((local_start, end, "email"))
            pos = end
    return found


def _email_domain_end(norm: str, labels: list[tuple[int, int]], first_obfuscated: int, form: str) -> int | None:
    # Walk back from the last label so "john@gmail.com.Thanks" still yields john@gmail.com.
    for k in range(len(labels) - 1, 0, -1):
        tld = norm[labels[k][0] : labels[k][1]].lower()
        if form == "word":
            # " at " and " dot " are ordinary words: demand a TLD nobody writes by accident.
            ok = tld in _STRONG_TLDS
        elif form == "plain" and first_obfuscated >= k:
            previous = norm[labels[k - 1][0] : labels[k - 1][1]]
            ok = _is_plain_tld(tld) and not _looks_like_sentence_typo(previous, norm[labels[k][0] : labels[k][1]])
        else:
            ok = tld in _STRONG_TLDS or tld in _WEAK_TLDS
        if ok:
            return labels[k][1]
    first = norm[labels[0][0] : labels[0][1]].lower() if labels else ""
    return labels[0][1] if first in _MAIL_PROVIDERS else None


def _trim_url(norm: str, start: int, end: int) -> int:
    """Drop sentence punctuation glued to a link, and a closing bracket that the link did not open."""
    while end > start:
        last = norm[end - 1]
        unopened = last in _CLOSERS and norm.count(_CLOSERS[last], start, end) < norm.count(last, start, end)
        if last not in _TRAILING_PUNCT and not unopened:
            break
        end -= 1
    return end


def _looks_like_sentence_typo(previous: str, tld: str) -> bool:
    # "done.Today" is a missing space after a full stop; real hosts are rarely Title-cased after a
    # lower-case label.
    return bool(previous) and previous[-1].islower() and tld[:1].isupper() and tld[1:].islower()


def _find_links(norm: str) -> list[_Span]:
    found: list[_Span] = []
    for match in _SCHEME_URL_RE.finditer(norm):
        end = _trim_url(norm, match.start(), match.end())
        if any(ch.isalnum() for ch in norm[match.start() : end].partition("//")[2]):
            found.append((match.start(), end, "link"))
    for match in _BARE_DOMAIN_RE.finditer(norm):
        span = _bare_domain(norm, match)
        if span is not None:
            found.append(span)
    for match in _OBFUSCATED_DOMAIN_RE.finditer(norm):
        labels, first_obfuscated = _labels(norm, match.start(), match.end())
        for k in range(len(labels) - 1, 0, -1):
            if first_obfuscated < k and norm[labels[k][0] : labels[k][1]].lower() in _STRONG_TLDS:
                found.append((labels[0][0], labels[k][1], "link"))
                break
    return found


def _bare_domain(norm: str, match: re.Match[str]) -> _Span | None:
    labels, _ = _labels(norm, match.start("domain"), match.end("domain"))
    names = [norm[a:b] for a, b in labels]
    has_path = match.group("path") is not None
    if names[0].lower() == "www" and len(names) >= 2:
        end = match.end("path") if has_path else labels[-1][1]
        return match.start(), _trim_url(norm, match.start(), end), "link"
    for k in range(len(names) - 1, 0, -1):
        tld = names[k].lower()
        # Known hosts have at most three labels; joining longer runs would make a 2,000-label string
        # cost quadratic time.
        host = ".".join(names[: k + 1]).lower() if k < 3 else ""
        last_two = f"{names[k - 1]}.{names[k]}".lower()
        if host in _CONTACT_HOSTS or last_two in _CONTACT_HOSTS:
            ok = True
        elif has_path and k == len(names) - 1:
            ok = tld in _PATH_TLDS
        else:
            ok = (
                tld in _STRONG_TLDS
                and tld not in _FILE_EXTS
                and host not in _TECH_NAMES
                and not _looks_like_sentence_typo(names[k - 1], names[k])
            )
        if ok:
            end = match.end("path") if has_path and k == len(names) - 1 else labels[k][1]
            return match.start(), _trim_url(norm, match.start(), end), "link"
    return None


# ---------------------------------------------------------------------------------------------------
# Phones
# ---------------------------------------------------------------------------------------------------

# Digit runs that look like phone numbers but are dates, times, money, versions, addresses or references.
# They are blanked out (same length, so offsets hold) before the phone scan.
_CURRENCY_WORDS = r"usd|eur|gbp|inr|rub|cad|aud|chf|jpy|cny|idr|brl|dollars?|euros?|bucks|pounds?|rupees?|rs|k"
_NOT_PHONE_RE = re.compile(
    "|".join(
        (
            # ISO dates and date-times: 2026-11-21, 2026/11/21 10:30
            r"(?<!\d)\d{4}[-./]\d{1,2}[-./]\d{1,2}(?:[T \t]\d{1,2}[:.]\d{2}(?:[:.]\d{2})?)?(?!\d)",
            # day-month-year either way round: 21.11.2026, 11/21/26, with an optional time
            r"(?<!\d)\d{1,2}[-./]\d{1,2}[-./](?:\d{4}|\d{2})(?:[ \t]\d{1,2}[:.]\d{2})?(?!\d)",
            # time ranges written with dots: 10.30-11.45
            r"(?<![\d.])\d{1,2}\.\d{2}[ \t]?-[ \t]?\d{1,2}\.\d{2}(?![\d.])",
            # year ranges: 2024-2025, 2024/25
            r"(?<!\d)(?:19|20)\d{2}[ \t]?[-/][ \t]?(?:(?:19|20)\d{2}|\d{2})(?!\d)",
            # IPv4 addresses
            r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])",
            # ZIP+4
            r"(?<!\d)\d{5}-\d{4}(?!\d)",
            # round-number ranges: 1500-2500, 1000 to 2000
            r"(?<!\d)\d+00[ \t]?(?:-|to)[ \t]?\d+00(?!\d)",
            # amounts after a currency sign: $1,250.00, $ 1 250 000
            r"[$\u20ac\u00a3\u00a5\u20b9\u20bd][ \t]?\d[\d,.]*+(?:[ \t]\d{3}(?!\d))*+",
            # amounts before a currency word: 150 USD, 1 250 000 rub, 20k
            rf"(?<![\d.,])(?<!\d[ \t])\d[\d,.]*+(?:[ \t]\d{{3}}(?!\d))*+[ \t]?(?:{_CURRENCY_WORDS})\b",
            # references: order #12345678, INV-2026-000123, No. 1234567890
            r"(?:\#|\u2116|\bno\.|\b(?:order|invoice|inv|ref|reference|ticket|tracking|transaction|txn|sku|po|"
            r"case|item|id|isbn|timestamp)\b[ \t]*+(?:(?:no|num|number|nr|id)\b\.?)?[ \t]*+[:#\-]?)[ \t]*+\d[\d\-]*+",
            # versions: v1.2.3
            r"\bv\d+(?:\.\d+)++",
        )
    ),
    re.IGNORECASE,
)
_PHONE_RE = re.compile(
    # Not glued to a word, a reference sign, a currency, or the tail of "1,250" / "3.14".
    r"(?<![\w#$\u20ac\u00a3\u00a5\u20b9\u20bd+])(?<![^\W\d_]-)(?<!\d[.,])"
    r"(?:\+[ \t]?|\((?=\d))?\d(?:[ \t.\-/()]{0,3}+\d)*+"
)
_THOUSANDS_RE = re.compile(r"\d{1,3}(?:([., ])\d{3})(?:\1\d{3})*+")
_DECIMAL_RE = re.compile(r"\d+[.,]\d{1,2}")
_DIGIT_GROUP_RE = re.compile(r"\d+")


def _blank_non_phones(norm: str) -> str:
    pieces: list[str] = []
    pos = 0
    for match in _NOT_PHONE_RE.finditer(norm):
        pieces.append(norm[pos : match.start()])
        pieces.append("x" * (match.end() - match.start()))  # "x" is a word char: nothing glues onto it
        pos = match.end()
    pieces.append(norm[pos:])
    return "".join(pieces)


def _is_phone(candidate: str) -> bool:
    digits = sum(ch.isdigit() for ch in candidate)
    if not 8 <= digits <= 15:  # E.164 caps numbers at 15 digits; longer runs are cards, IBANs, lists
        return False
    body = candidate.lstrip("+(")
    separated = not body.isdigit()
    if not separated and not candidate.startswith("+") and digits < 10:
        return False  # a bare 8-9 digit number is more often an id or an amount than a phone
    if _DECIMAL_RE.fullmatch(candidate):
        return False
    groups = _DIGIT_GROUP_RE.findall(candidate)
    if len(groups) >= 3 and all(len(g) == 2 for g in groups) and groups[0][0] != "0" and candidate[0] != "+":
        return False  # "sizes 10 12 14 16": a list; two-digit national formats ("06 12 34 56 78") open with 0
    # 12.500.000 / 12 500 000: an amount grouped in thousands, which phone numbers never end in
    return not (_THOUSANDS_RE.fullmatch(candidate) and candidate.endswith("000"))


def _find_phones(norm: str) -> list[_Span]:
    blanked = _blank_non_phones(norm)
    return [(m.start(), m.end(), "phone") for m in _PHONE_RE.finditer(blanked) if _is_phone(m.group())]


_NUMBER_WORDS = "zero|oh|one|two|three|four|five|six|seven|eight|nine|niner|double|triple"
_NUMBER_TOKEN = rf"(?:(?:{_NUMBER_WORDS})\b|\d++(?!\w))"
_SPELLED_PHONE_RE = re.compile(rf"(?<!\w){_NUMBER_TOKEN}(?:[ \t,.\-]{{1,3}}+{_NUMBER_TOKEN})*+", re.IGNORECASE)
_NUMBER_TOKEN_RE = re.compile(rf"{_NUMBER_WORDS}|\d+", re.IGNORECASE)
_REPEATS: Mapping[str, int] = MappingProxyType({"double": 1, "triple": 2})


def _find_spelled_phones(norm: str) -> list[_Span]:
    found: list[_Span] = []
    for match in _SPELLED_PHONE_RE.finditer(norm):
        tokens = [t.lower() for t in _NUMBER_TOKEN_RE.findall(match.group())]
        words = sum(not t.isdigit() for t in tokens)
        digits = sum(len(t) if t.isdigit() else _REPEATS.get(t, 1) for t in tokens)
        # Pure digit runs are the digit scanner's business; a run needs a word to be "spelled out", and
        # seven tokens so that "one or two" and "in 2025 one" never qualify.
        if words >= 1 and len(tokens) >= 7 and digits >= 7:
            found.append((match.start(), match.end(), "phone"))
    return found


# ---------------------------------------------------------------------------------------------------
# Messenger and payment handles
# ---------------------------------------------------------------------------------------------------

# strong: names that mean the service and nothing else; weak: also ordinary words ("signal", "wise",
# "discord"); abbr: short forms that need a handle or an invitation; strict: "WA" (also Washington),
# only ever with a number or @handle beside it.
_SERVICE_RE = re.compile(
    r"\b(?:"
    r"(?P<strong>wh?at'?s+[ \t]?ap+|wassap|whatapp|wapp|tele[ \t]?gram+|telega|sk[yi]pe|we-?chat|weixin|viber"
    r"|pay[ \t]?pal|venmo|cash[ \t]?app|zelle|payoneer|transfer[ \t]?wise|instagram|snapchat)"
    r"|(?P<weak>signal|discord|wise)"
    r"|(?P<abbr>insta|ig|tg)"
    r"|(?P<strict>wa|w/a)"
    r")\b",
    re.IGNORECASE,
)
# "Telegram bot", "PayPal checkout": building an integration is the job, not an escape from the platform.
_TECH_SUFFIX_RE = re.compile(
    r"[ \t\-]*+(?:apis?|bots?|sdks?|integrations?|checkout|buttons?|gateways?|webhooks?|plugins?|widgets?|clone"
    r"|ads|sandbox|ipn|mini[ \t]?apps?|web[ \t]?app|features?|login|auth|notifications?|channel[ \t]+integration)\b",
    re.IGNORECASE,
)
_IDENT_AFTER_RE = re.compile(
    r"(?P<gap>(?:[ \t:=,\-]*+(?:is|id|me|at|on|handle|username|user|name|number|num|no|nick|account|acc"
    r"|contact)\b)*+[ \t:=,\-]*+)"
    r"(?P<ident>@[\w.\-]{2,32}+"
    r"|\$[^\W\d_]\w{1,19}+"
    r"|live:[\w.\-]{2,64}+"
    r"|[\w.\-]{2,32}+\#\d{4}(?!\d)"
    r"|\+?\(?\d(?:[ \t.\-/()]{0,3}+\d)*+"
    r"|\w[\w.\-]{2,40}+)",
    re.IGNORECASE,
)
_IDENT_BEFORE_RE = re.compile(
    r"(?<![\w.\-])(?:@[\w.\-]{2,32}|\$[^\W\d_]\w{1,19}|[\w.\-]{2,32}\#\d{4}|live:[\w.\-]{2,64})"
    r"[ \t,]*+(?:(?:on|via|at|in|for)[ \t]++)?(?:(?:my|the)[ \t]++)?\Z",
    re.IGNORECASE,
)
_INVITE_VERBS = (
    r"add|text|txt|message|msg|dm|pm|contact|reach|call|ring|ping|find|follow|chat|talk|speak|move|switch"
    r"|continue|go|pay|paid|paying|payment|payments|send|transfer|write|hit|hmu|connect|join|discuss"
    r"|communicate"
)
_INVITE_PREPS = r"on|via|through|thru|over|to|in|using|with|by|at|into"
_INVITE_RE = re.compile(
    rf"\b(?:{_INVITE_VERBS})\b(?P<filler>(?:[ \t,]++[\w']++){{0,3}}?)[ \t,]++(?:{_INVITE_PREPS})[ \t]++"
    r"(?:(?:my|your|our|the|a)[ \t]++)?\Z",
    re.IGNORECASE,
)
_INVITE_DIRECT_RE = re.compile(
    r"\b(?:add|accept|accepts|accepting|prefer|join|contact|ping)[ \t]++(?P<my>(?:my|our)[ \t]++)?\Z",
    re.IGNORECASE,
)
_LETS_RE = re.compile(
    r"\b(?:let'?s|let[ \t]++us|(?:can|could|shall|should)[ \t]++we|we[ \t]++(?:can|could))"
    r"(?P<filler>(?:[ \t]++[\w']++){0,2}?)[ \t]++\Z",
    re.IGNORECASE,
)
_QUESTION_RE = re.compile(
    r"\b(?:(?:do|does|can|could|would)[ \t]++(?:you|u)[ \t]++(?:have|use|got)|(?:are|r)[ \t]++(?:you|u)[ \t]++on"
    r"|have[ \t]++(?:you|u)[ \t]++got)[ \t]++(?:(?:a|an)[ \t]++)?\Z",
    re.IGNORECASE,
)
_VERB_ME_RE = re.compile(r"[ \t]++(?:me|us)\b", re.IGNORECASE)
_TECH_FILLER_RE = re.compile(
    r"\b(?:bots?|apis?|integrations?|scripts?|code|plugins?|notifications?|updates?|alerts?|webhooks?|logs?"
    r"|events?|data)\b",
    re.IGNORECASE,
)
_CHAIN_RE = re.compile(r"[ \t]*+(?:,[ \t]*+)?(?:or|and|/|&|\||,)[ \t]*+", re.IGNORECASE)
_SKYPE_LIVE_RE = re.compile(r"(?<![\w.\-])live:[\w.\-]{3,64}+", re.IGNORECASE)
_PLAIN_STOPWORDS = _words("no not none yes na n/a nope ok okay sure maybe later soon here there same please thanks")
_USERNAME_SHAPE_RE = re.compile(r"[\d_]|\w\.\w")
_WINDOW = 80  # how far back an invitation ("send the payment through ...") is looked for


def _ident_end(klass: str, gap: str, ident: str, start: int, tech: bool) -> int | None:
    """End offset of an identifier next to a service name, or None if it is not one for this class."""
    token = ident.rstrip(".-")
    end = start + len(token)
    if not token:
        return None
    if token.startswith("@"):
        return end if len(token) >= 3 else None
    if token[:1] in "+(" or token[:1].isdigit():
        digits = sum(ch.isdigit() for ch in token)
        return end if 5 <= digits <= 15 else None
    if klass == "strict":
        return None
    if token.startswith("$") or token.lower().startswith("live:") or "#" in token:
        return end
    if tech or len(token) < 3 or not gap or token.lower() in _PLAIN_STOPWORDS:
        return None
    if klass in ("strong", "abbr") and (":" in gap or "=" in gap):
        return end  # "telegram: johnsmith"
    # Without a colon only something shaped like a username counts: "skype john.smith", "tg john_s".
    if _USERNAME_SHAPE_RE.search(token):
        return end
    return None


def _invitation_start(norm: str, klass: str, start: int, tech: bool) -> int | None:
    if tech or klass == "strict":
        return None
    window = max(0, start - _WINDOW)
    for pattern in (_INVITE_RE, _LETS_RE):
        match = pattern.search(norm, window, start)
        if match and not _TECH_FILLER_RE.search(match.group("filler")):
            return match.start()
    direct = _INVITE_DIRECT_RE.search(norm, window, start)
    if direct and (klass == "strong" or direct.group("my")):
        return direct.start()
    question = _QUESTION_RE.search(norm, window, start)
    return question.start() if question else None


def _find_handles(norm: str) -> list[_Span]:
    found: list[_Span] = []
    last: _Span | None = None
    for service in _SERVICE_RE.finditer(norm):
        klass = service.lastgroup or "strict"
        start, end = service.span()
        tech = _TECH_SUFFIX_RE.match(norm, end) is not None
        spans: list[tuple[int, int]] = []
        after = _IDENT_AFTER_RE.match(norm, end)
        if after is not None:
            ident_end = _ident_end(klass, after.group("gap"), after.group("ident"), after.start("ident"), tech)
            if ident_end is not None:
                spans.append((start, ident_end))
        before = _IDENT_BEFORE_RE.search(norm, max(0, start - _WINDOW), start)
        if before is not None:
            spans.append((before.start(), end))
        invitation = _invitation_start(norm, klass, start, tech)
        if invitation is not None:
            spans.append((invitation, end))
        if klass == "strong" and not tech and (verb_me := _VERB_ME_RE.match(norm, end)):
            spans.append((start, verb_me.end()))  # "whatsapp me", "zelle me"
        if not spans and last is not None and _CHAIN_RE.fullmatch(norm, last[1], start):
            spans.append((start, end))  # "add me on telegram or whatsapp": the invitation carries over
        if spans:
            last = (min(s for s, _ in spans), max(e for _, e in spans), "handle")
            found.append(last)
        else:
            last = None
    # Skype ids carry their own marker.
    found.extend((m.start(), m.end(), "handle") for m in _SKYPE_LIVE_RE.finditer(norm))
    return found


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------


def _merge(spans: Iterable[_Span]) -> list[_Span]:
    """Union overlapping spans; the merged span takes the kind of its longest part."""
    ordered = sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]), -_KIND_RANK[s[2]]))
    merged: list[_Span] = []
    best: tuple[int, int] = (0, 0)  # (length, rank) of the part that names the current merged span
    for start, end, kind in ordered:
        score = (end - start, _KIND_RANK[kind])
        if merged and start < merged[-1][1]:
            m_start, m_end, m_kind = merged[-1]
            if score > best:
                best, m_kind = score, kind
            merged[-1] = (m_start, max(m_end, end), m_kind)
        else:
            merged.append((start, end, kind))
            best = score
    return merged


# Cheap prefilters, one per detector: each looks for something the detector's own patterns cannot
# match without (an "@" or a bracketed/spaced "at", a dot or "://", a digit, a number word, a
# service name's stem), so skipping a detector when its prefilter fails never loses a finding; most
# messages are plain words and then skip every scan (the phone scan alone was 6% of a send's CPU).
# They read the text lower-cased, with the letters that case-insensitive matching also takes for
# "i", "s" and "k" (dotless i, long s, Kelvin sign) folded the same way: plain substring tests on
# it are several times cheaper than IGNORECASE alternations.
_CASE_FOLD = str.maketrans({"\u0131": "i", "\u017f": "s", "\u212a": "k"})
_SPACED_AT_RE = re.compile(r"[ \t(\[{<]at[ \t)\]}>]")
_NUMBER_WORD_RE = re.compile(rf"\b(?:{_NUMBER_WORDS})\b")
_DIGIT_RE = re.compile(r"\d")
# Every alternative of _SERVICE_RE contains one of these stems, or is one of the short whole words.
_SERVICE_STEMS = (
    "sap", "s ap", "s\tap", "tap", "wap", "tele", "skype", "skipe", "chat", "weixin", "viber", "pay", "venmo",
    "cash", "zelle", "wise", "insta", "signal", "discord", "live:",
)  # fmt: skip
_SHORT_SERVICE_RE = re.compile(r"\b(?:ig|tg|wa|w/a)\b")


def _detectors_for(norm: str) -> list[Callable[[str], list[_Span]]]:
    low = norm.lower().translate(_CASE_FOLD)
    wanted: list[Callable[[str], list[_Span]]] = []
    if "@" in norm or _SPACED_AT_RE.search(low):
        wanted.append(_find_emails)
    if "." in norm or "://" in norm or "dot" in low:
        wanted.append(_find_links)
    if _DIGIT_RE.search(norm):
        wanted.append(_find_phones)
    if _NUMBER_WORD_RE.search(low):
        wanted.append(_find_spelled_phones)
    if any(stem in low for stem in _SERVICE_STEMS) or _SHORT_SERVICE_RE.search(low):
        wanted.append(_find_handles)
    return wanted


def find_contacts(text: str) -> list[ContactFinding]:
    """Contact details in text, sorted by start and non-overlapping, with offsets into text itself."""
    if not text:
        return []
    norm, starts, ends = _normalise(text)
    spans: list[_Span] = []
    for detector in _detectors_for(norm):
        spans.extend(detector(norm))
    if not spans:
        return []
    findings: list[_Span] = []
    for n_start, n_end, kind in spans:
        if n_end <= n_start:
            continue
        if starts is None or ends is None:
            findings.append((n_start, n_end, kind))
        else:
            findings.append((starts[n_start], ends[n_end - 1], kind))
    return [ContactFinding(kind, s, e, text[s:e]) for s, e, kind in _merge(findings)]


def mask_contacts(text: str, findings: list[ContactFinding]) -> str:
    """text with every finding replaced by its kind's mask; overlapping findings are masked once."""
    if not findings:
        return text
    for finding in findings:
        if finding.end > len(text) or text[finding.start : finding.end] != finding.text:
            raise ValueError(f"finding {finding!r} does not belong to this text")
    pieces: list[str] = []
    pos = 0
    for start, end, kind in _merge((f.start, f.end, f.kind) for f in findings):
        pieces.append(text[pos:start])
        pieces.append(MASKS[kind])
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)
