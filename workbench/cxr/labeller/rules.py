"""The concept phrase lists of the report labeller (see :mod:`workbench.cxr.labeller`).

Every pattern is a regular expression matched against the lower-cased text (whitespace runs
collapsed to one space) with word boundaries added around it; the negation, uncertainty and
history cues are NegEx termsets in :mod:`workbench.cxr.labeller.terms`. Mentions follow
CheXpert's mention lists in spirit (Irvin et al. 2019, section 3.1), with
the synonyms radiologists use in MIMIC-CXR reports ("pacer", "ET tube", "PICC", "sternotomy
wires", "enlarged cardiac silhouette", "vascular congestion", "collapse", ...).
"""

from __future__ import annotations

from types import MappingProxyType

_HEART = r"(?:heart|cardiac(?: silhouette| size| contours?| shadow)?|heart (?:size|silhouette))"
_SIZE_WORDS = r"(?:mild(?:ly)?|moderate(?:ly)?|severe(?:ly)?|markedly|massive(?:ly)?|slightly|again|now|still|top[- ]normal|borderline|minimally|substantially|significantly)"  # noqa: E501

# Concept -> mention patterns. Phantom FINDINGS and DEVICES use their own names; the
# extra concepts cover CheXpert labels that no phantom concept implies.
MENTIONS = MappingProxyType(
    {
        "cardiomegaly": (
            r"cardiomegaly",
            rf"enlarge(?:d|ment of(?: the)?) {_HEART}",
            rf"{_HEART}(?: size)? (?:is |are |appears |remains |was |has )?(?:\w+ ){{0,3}}?enlarge(?:d|ment)",  # noqa: E501
            rf"{_HEART} enlargement",
            r"(?:large|increased|enlarged) heart(?: size)?",
        ),
        "pleural_effusion": (
            r"pleural effusions?",
            r"(?<!pericardial )(?<!joint )effusions?",
            r"pleural fluid",
            r"hydro(?:pneumo)?thorax",
            r"blunt(?:ing|ed) (?:of )?(?:the )?(?:\w+ ){0,2}?costophrenic (?:angles?|sulc[iu]s?)",
        ),
        "pneumothorax": (r"pneumothora(?:x|ces)", r"ptx", r"hydropneumothorax"),
        "consolidation": (r"consolidat\w*(?: opacit(?:y|ies))?",),
        "atelectasis": (
            r"atelecta\w*",
            r"(?:lobar |segmental |subsegmental )?collapsed?(?! fracture)",
            r"volume loss",
        ),
        "edema": (
            r"(?<!soft tissue )(?<!subcutaneous )(?<!bowel wall )edema",
            r"(?:pulmonary )?(?:vascular|venous) (?:congestion|engorgement|redistribution)",
            r"pulmonary congestion",
            r"congestive (?:heart )?failure",
            r"chf",
            r"kerley(?: b)? lines?",
            r"fluid overload",
            r"cephali[sz]ation",
        ),
        "nodule": (r"nodul(?:e|es|ar|arity)(?: (?:opacit(?:y|ies)|densit(?:y|ies)|lesions?))?",),
        "rib_fracture": (
            r"rib fx",
            r"(?:(?!(?:no|not|any|without) )\w+ )?rib fractures?",
            r"fractures? (?:of|involving|in|through) (?:the )?(?:\w+ ){0,4}?ribs?",
            r"fractured (?:\w+ ){0,3}?ribs?",
        ),
        "pacemaker": (
            r"pacemakers?(?:/icds?)?(?: (?:leads?|generator|device|wires?))?",
            r"pacers?(?: (?:leads?|wires?|device))?",
            r"pacing (?:wires?|leads?|device|generator)",
            r"a?icds?",
            r"(?:implantable )?(?:cardioverter[- ])?defibrillators?",
            r"(?:dual|single|triple|two|three)[- ](?:chamber|lead) (?:pacemaker|device|pacer|icd)",
            r"(?:right atrial|right ventricular|ra|rv|transvenous) (?:pacer |pacing )?leads?",
        ),
        "endotracheal_tube": (
            r"endotracheal(?: tube)?s?",
            r"et[- ]?tubes?",
            r"etts?",
            r"intubated|intubation",
        ),
        "central_line": (
            r"central (?:venous )?(?:line|catheter)s?",
            r"cvcs?",
            r"picc(?: line)?s?",
            r"peripherally inserted central (?:venous )?catheters?",
            r"(?:internal jugular|ij|subclavian)(?: central)?(?: venous)? (?:line|catheter|introducer|sheath|port)s?",  # noqa: E501
            r"(?:port-?a-?cath|portacath|power ?port|chest (?:wall )?port)s?",
            r"(?:hemo)?dialysis (?:line|catheter)s?",
        ),
        "enteric_tube": (
            r"(?:naso|oro)(?:gastric|enteric|jejunal)(?: (?:tube|catheter))?s?",
            r"(?:ng|og|ngt|ogt)(?:[- ]tubes?)?",
            r"(?:enteric|feeding|gastric|dobb?hoff)(?: tube)?s?",
        ),
        "sternotomy_wires": (
            r"(?:median )?sternotomy(?: (?:wires?|sutures?))?",
            r"sternal (?:wires?|sutures?|cerclage)",
        ),
        "pneumonia": (r"(?:broncho)?pneumonias?", r"infectious process", r"infection"),
        "opacity": (
            r"opaci(?:ty|ties|fication|fied)",
            r"densit(?:y|ies)",
            r"infiltrat(?:e|es|ion)",
            r"hazy|haziness",
            r"air ?space (?:disease|process)",
            r"ground[- ]glass",
        ),
        "enlarged_cardiomediastinum": (
            r"(?:enlarge(?:d|ment of(?: the)?)|widen(?:ed|ing of(?: the)?)) (?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",  # noqa: E501
            r"(?:cardio)?mediastin(?:um|al (?:silhouette|contours?)) (?:is |are |appears |remains )?(?:\w+ ){0,2}?(?:enlarged|widened)",  # noqa: E501
            r"mediastinal (?:widening|enlargement)",
        ),
        "pleural_other": (
            r"pleural (?:thickening|plaques?|scarring|calcifications?|fibrosis)",
            r"fibrothorax",
            r"apical (?:pleural )?cap",
        ),
        "fracture": (r"fractur(?:e|es|ed)", r"fx"),
        "lung_lesion": (r"mass(?:es)?(?! effect)", r"lesions?", r"tumou?rs?", r"neoplasms?"),
        "support_device": (
            r"chest tubes?",
            r"pigtail(?: catheters?)?",
            r"(?:mediastinal|pleural|surgical|jp) drains?",
            r"tracheostomy(?: tube)?s?|trach",
            r"swan[- ]ganz(?: catheters?)?",
            r"pulmonary arter(?:y|ial) catheters?",
            r"(?:intra-?aortic )?balloon pump|iabp",
            r"support devices?",
            r"(?:lines and tubes|tubes and lines|monitoring (?:and support )?devices)",
            r"(?:gastrostomy|g-tube|peg tube)s?",
            r"(?:prosthetic|mechanical) (?:\w+ )?valves?|valve replacement",
            r"stents?",
            r"loop recorder",
            r"catheters?",
            r"tubes?",
        ),
    }
)

# CheXpert label each extra concept feeds (phantom concepts use findings.CHEXPERT_OF).
EXTRA_CHEXPERT = MappingProxyType(
    {
        "pneumonia": "Pneumonia",
        "opacity": "Lung Opacity",
        "enlarged_cardiomediastinum": "Enlarged Cardiomediastinum",
        "pleural_other": "Pleural Other",
        "fracture": "Fracture",
        "lung_lesion": "Lung Lesion",
        "support_device": "Support Devices",
    }
)

# Concepts whose normal statements also count as CheXpert negatives ("heart size is normal"
# -> Cardiomegaly 0). Other normal statements ("lungs are clear") only negate phantom concepts:
# CheXpert leaves those labels blank (No Finding carries them).
CHEXPERT_NORMALS = ("cardiomegaly",)

_LUNG_DISEASE = ("consolidation", "atelectasis", "edema", "pneumonia", "opacity")
_NORMAL_WORDS = r"(?:normal|within normal limits|unremarkable|upper limits? of normal|top[- ]normal|top of normal|not enlarged)"  # noqa: E501

# Statements of normality: each match is a negative (0) mention of the listed concepts.
NORMALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        rf"{_HEART}(?: size)? (?:is |are |appears |remains |was )?(?:\w+ ){{0,2}}?{_NORMAL_WORDS}",
        ("cardiomegaly",),
    ),  # noqa: E501
    (rf"normal(?:[- ]sized?)? {_HEART}(?: size)?", ("cardiomegaly",)),
    (rf"{_HEART} (?:is |are )?normal in size", ("cardiomegaly",)),
    (
        r"(?:cardio)?mediastinal (?:and hilar )?(?:silhouettes?|contours?)(?: \w+){0,4}? (?:normal|within normal limits|unremarkable)",  # noqa: E501
        ("enlarged_cardiomediastinum", "cardiomegaly"),
    ),
    (
        r"normal (?:cardio)?mediastinal (?:silhouettes?|contours?)",
        ("enlarged_cardiomediastinum", "cardiomegaly"),
    ),  # noqa: E501
    (r"lungs(?: \w+){0,4}? clear|clear lungs", _LUNG_DISEASE),
    (
        r"no (?:acute |focal |significant )*pleural (?:abnormalit\w+|disease|process)",
        ("pleural_effusion", "pneumothorax", "pleural_other"),
    ),  # noqa: E501
    (
        r"costophrenic (?:angles?|sulc[iu]s?) (?:are |is |remain )?(?:sharp|clear|preserved)",
        ("pleural_effusion",),
    ),  # noqa: E501
    (
        r"no (?:acute )?(?:osseous|bony|skeletal) (?:abnormalit\w+|injury|injuries|lesions?)",
        ("fracture", "rib_fracture"),
    ),  # noqa: E501
    (
        r"(?:osseous|bony) structures (?:are |appear )?(?:intact|unremarkable|normal)",
        ("fracture", "rib_fracture"),
    ),  # noqa: E501
    (r"extubat\w+", ("endotracheal_tube",)),
)

# Between a described observation and a diagnosis of the same concept ("nodular opacity ...
# may represent a nodule"): the observation takes the diagnosis' value.
INFERENCE_LINK = (
    r"[\s,]*(?:[\w-]+\s+){0,6}?(?:(?:may|might|could|likely|probably|possibly)\s+"
    r"(?:represent|reflect|indicate|be\s+due\s+to|be)\w*|suggestive\s+of|concerning\s+for|"
    r"suspicious\s+for|worrisome\s+for|consistent\s+with|compatible\s+with)\s+(?:[\w-]+\s+){0,3}?"
)

# Pre-modifiers of a finding's noun phrase: the words before a mention that belong to it
# ("small left pleural effusion", "bibasilar plate-like atelectasis", "1.2 cm right upper lobe
# nodule", "left-sided dual-chamber pacemaker"). The mention span is extended back over a
# run of them (see :mod:`workbench.cxr.labeller.phrase`); the status is decided on the matched
# phrase alone, so these words never change a label. Only descriptors of the finding itself
# are listed: no cue of any termset ("no", "possible", "stable", "chronic", "borderline"), no
# change or time words ("new", "increased", "acute", "persistent"), no determiners.
PRE_MODIFIERS = MappingProxyType(
    {
        "laterality": (
            r"left|right|bilateral|unilateral|bibasilar|bibasal|biapical",
            r"[a-z]+-sided",
        ),
        "location": (
            r"upper|middle|mid|lower|lobe|lingular|basilar|basal|base|apical|apicolateral",
            r"perihilar|hilar|infrahilar|retrocardiac|subpulmonic|peripheral|lateral|medial",
            r"posterior|anterior|posterolateral|anterolateral|axillary|lung|pulmonary|pleural",
            r"chest wall|interstitial|alveolar|air ?space|dependent",
        ),
        "size_severity": (
            r"small|large|moderate|mild|severe|trace|tiny|minimal|minor|massive|extensive",
            r"slight|marked|substantial|significant|[a-z]+-sized",
            r"mildly|moderately|severely|slightly|minimally|markedly|substantially|massively",
            r"\d+(?:\.\d+)?(?: ?x ?\d+(?:\.\d+)?)* ?(?:mm|cm)",
        ),
        "morphology": (
            r"subsegmental|segmental|lobar|multilobar|focal|multifocal|patchy|streaky|linear",
            r"discoid|platelike|[a-z]+-like|confluent|loculated|layering|compressive|rounded",
            r"displaced|nondisplaced|non-displaced|comminuted|\d+(?:st|nd|rd|th)",
            r"(?:single|dual|double|triple|two|three)[- ](?:chamber|lead|lumen)|transvenous",
            r"tunnell?ed",
        ),
    }
)

# Words that join two pre-modifiers of one phrase ("left and right", "mild to moderate").
MODIFIER_JOINS = (r"and", r"or", r"to", r"and/or")
