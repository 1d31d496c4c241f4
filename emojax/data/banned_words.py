"""Explicit emotion vocabulary that SEV stimuli must not contain, and the checker.

SEV scenarios and events describe *what happened*; the emotion is supplied later by the prompt
(or by an intervention). A stimulus that names a feeling ("I was thrilled", "a shocking bill")
leaks an emotion into the content and breaks the within-group contrast that S2 and S5 rely on
(method.md §3.1). The rule enforced here is therefore strict: no word from the lists below, in any
inflection, anywhere in a scenario or event.

The lists are grouped by what they name:
- one group per canonical emotion (anger, sadness, happiness, fear, surprise, disgust),
  holding its synonyms, near-synonyms and their inflections (adjective, adverb, noun, verb forms);
- `other_affect`: generic emotion vocabulary and further named feelings (pride, shame, relief,
  hope, love, stress, ...);
- `commentary`: narrator's verdicts ("luckily", "terrible") that announce the valence instead of
  letting the outcome carry it;
- `expression`: overt displays of emotion (crying, smiling, laughing, screaming, ...), which
  announce the feeling as plainly as its name does.

Matching is on whole words, case-insensitive, with hyphens and apostrophes as separators, so "sad"
never matches "saddle", and "well-pleased" is caught through "pleased".
Every form is spelled out instead of stemmed, because stemming over-matches: "content" (the
noun), "alarm" (the clock), "concern" (a topic) and "hurt" (an injury) are allowed on purpose.
"""
from __future__ import annotations

import re
from typing import Mapping

BANNED_WORDS: Mapping[str, frozenset[str]] = {
    "anger": frozenset("""
        anger angered angering angers angry angrier angriest angrily
        furious furiously fury rage rages raged raging enrage enraged enraging
        irritate irritated irritates irritating irritation irritable
        annoy annoyed annoying annoys annoyance
        mad madder maddening
        frustrate frustrated frustrates frustrating frustration frustrations
        outrage outraged outrageous resent resented resentful resentment
        livid irate incensed infuriate infuriated infuriating exasperated exasperating exasperation
        indignant indignation hostile hostility wrath
        fuming seething bitter bitterly bitterness
    """.split()),
    "sadness": frozenset("""
        sad sadder saddest sadly sadness sadden saddened saddening
        unhappy unhappier unhappily unhappiness
        sorrow sorrows sorrowful grief grieve grieved grieving
        depressed depressing depression miserable miserably misery
        heartbroken heartbreak heartbreaking gloomy gloom melancholy
        disappoint disappointed disappointing disappointment disappointments
        lonely loneliness despair despairing desperate desperately
        dejected downcast despondent forlorn glum mournful mourn mourned mourning
        tearful crestfallen devastated devastating devastation distraught
        hurtful wistful
    """.split()),
    "happiness": frozenset("""
        happy happier happiest happily happiness
        joy joys joyful joyfully joyous glad gladly gladness
        delight delighted delightful delightfully pleased pleasing pleasure pleasurable
        cheerful cheerfully cheerfulness cheery cheer cheered cheering
        thrilled thrilling thrill excited exciting excitement excitedly
        ecstatic ecstasy elated elation euphoric euphoria jubilant
        overjoyed contented contentment satisfied satisfying satisfaction
        dissatisfied dissatisfaction gleeful glee blissful bliss merry
        grateful gratitude thankful pleasant pleasantly unpleasant
    """.split()),
    "fear": frozenset("""
        fear fears feared fearing fearful fearfully fearless
        afraid scared scary scare scares frighten frightened frightening fright
        terrified terrifying terrify terror horrified horrifying horror horrible horribly
        panic panicked panicking panicky anxious anxiously anxiety anxieties
        nervous nervously nervousness worry worried worries worrying worrisome
        dread dreaded dreading dreadful alarmed alarming apprehensive apprehension
        uneasy unease petrified spooked timid
        concerned concerning
    """.split()),
    "surprise": frozenset("""
        surprise surprised surprises surprising surprisingly
        shock shocked shocking shockingly astonish astonished astonishing astonishment
        amaze amazed amazing amazingly amazement stunned stunning startle startled startling
        astounded astounding dumbfounded flabbergasted speechless bewildered
        wow
    """.split()),
    "disgust": frozenset("""
        disgust disgusted disgusting disgustingly
        revolted revolting revulsion repulsed repulsive repulsion
        gross grossed nauseated nauseating sickened sickening
        appalled appalling loathe loathed loathing loathsome contempt contemptuous
        vile abhorrent abhor despise despised repugnant yuck
    """.split()),
    "other_affect": frozenset("""
        emotion emotions emotional emotionally feel feels feeling feelings felt
        mood moods moody upset upsets upsetting
        relieved relief proud pride ashamed shame shameful embarrassed embarrassing embarrassment
        humiliated humiliating humiliation guilty guilt jealous jealousy envy envious
        hope hoped hopes hoping hopeful hopefully hopeless
        love loved loves loving lovely hate hated hates hating hatred
        stress stressed stressful overwhelmed overwhelming
        bored boring boredom eager eagerly enthusiastic enthusiastically enthusiasm
        calm calmly calmer regret regrets regretted regretful
        sorry nostalgic nostalgia
    """.split()),
    "commentary": frozenset("""
        fortunately unfortunately luckily unluckily thankfully lucky unlucky
        wonderful wonderfully fantastic awesome terrible terribly awful awfully
    """.split()),
    "expression": frozenset("""
        cry cries cried crying tears sob sobs sobbed sobbing weep wept weeping
        smile smiles smiled smiling grin grins grinned grinning
        laugh laughs laughed laughing laughter giggle giggled
        frown frowns frowned frowning scowl scowled
        scream screams screamed screaming yell yells yelled yelling
        shudder shuddered tremble trembled trembling gasp gasped sigh sighed
    """.split()),
}

ALL_BANNED_WORDS: frozenset[str] = frozenset().union(*BANNED_WORDS.values())

_WORD = re.compile(r"[a-z]+")


def find_banned_words(text: str) -> list[str]:
    """Banned words found in `text`, lowercased, in order of appearance (repeats kept)."""
    # Curly apostrophes split "school’s" into "school" + "s", like the straight ones.
    return [w for w in _WORD.findall(text.lower()) if w in ALL_BANNED_WORDS]


def banned_word_category(word: str) -> str | None:
    """The group of `BANNED_WORDS` that lists `word`, or None when the word is allowed."""
    lowered = word.lower()
    for category, words in BANNED_WORDS.items():
        if lowered in words:
            return category
    return None
