"""Word lists of the two synthetic quickstart domains.

Each domain routes a short free-text message to one of three labels. A message
is built from a framing template, a label-specific *cue* clause and neutral slot
fillers (names, times, references), so held-out rows share the domain's
vocabulary but are not copies of training rows.

Tasks and the pretraining corpus share the cues (that is the domain knowledge a
base model picks up) but use different framing templates, so no task input
appears verbatim in the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True)
class Template:
    """A framing sentence with ``{cue}``/``{Cue}`` and slot placeholders, and the
    possessives (``{poss}`` in a cue) that read naturally inside it."""

    text: str
    possessives: tuple[str, ...]


@dataclass(frozen=True)
class DomainSpec:
    """Everything needed to generate task rows and corpus documents for one domain."""

    name: str
    instruction: str
    cues: MappingProxyType[str, tuple[str, ...]]
    task_templates: tuple[Template, ...]
    corpus_templates: tuple[Template, ...]
    routing_sentences: tuple[str, ...]
    facts: MappingProxyType[str, tuple[str, ...]]
    slots: MappingProxyType[str, tuple[str, ...]]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.cues)


_NAMES: Final = (
    "Maria Lopez",
    "James Chen",
    "Aisha Khan",
    "Tom Becker",
    "Priya Nair",
    "Lucas Martin",
    "Emma Novak",
    "Daniel Osei",
    "Sofia Rossi",
    "Kenji Sato",
    "Olga Ivanova",
    "Noah Fischer",
    "Grace Kim",
    "Omar Haddad",
)

_INSURANCE = DomainSpec(
    name="insurance-claims",
    instruction="Which team handles this claim: auto, property or health?",
    cues=MappingProxyType(
        {
            "auto": (
                "{poss} car was rear-ended at a red light",
                "a deer ran into the side of {poss} pickup truck on the highway",
                "someone scraped {poss} parked sedan and drove off",
                "a rock cracked the windshield of {poss} car on the interstate",
                "{poss} motorcycle skidded on wet pavement and the fairing broke",
                "a delivery van sideswiped {poss} hatchback in heavy traffic",
                "{poss} SUV was stolen from a shopping mall parking lot",
                "the bumper and headlights of {poss} minivan were smashed in a collision",
                "{poss} convertible slid into a guardrail on an icy road",
                "a taxi backed into {poss} station wagon at a gas station",
                "the brakes of {poss} car failed and it hit a lamppost",
                "vandals slashed all four tires of {poss} car overnight",
            ),
            "property": (
                "a burst pipe flooded {poss} basement",
                "hail dented the roof and gutters of {poss} house",
                "a kitchen fire scorched the cabinets in {poss} apartment",
                "a tree fell on {poss} garage during the storm",
                "burglars broke the back door of {poss} home and took a television",
                "water leaked through the ceiling of {poss} living room",
                "lightning struck the chimney of {poss} cottage",
                "strong wind tore down {poss} fence and garden shed",
                "mold spread across {poss} bathroom walls after a leak",
                "the water heater in {poss} condo exploded",
                "smoke from a neighbor's fire damaged {poss} sofa and curtains",
                "a sewer backup ruined the carpets in {poss} townhouse",
            ),
            "health": (
                "{poss} son broke his wrist at soccer practice and needed a cast",
                "{poss} daughter was admitted to the hospital with pneumonia",
                "{poss} husband needed physical therapy after knee surgery",
                "{poss} wife went to the emergency room with chest pain",
                "{poss} doctor prescribed an expensive inhaler for asthma",
                "an ambulance took {poss} father to the hospital after he fainted",
                "{poss} dentist removed an infected wisdom tooth",
                "{poss} physician ordered an MRI scan for a herniated disc",
                "{poss} baby needed stitches after a fall at daycare",
                "{poss} mother had cataract surgery at the eye clinic",
                "{poss} grandfather stayed three nights in intensive care",
                "{poss} teenager tore a ligament and needed crutches",
            ),
        }
    ),
    task_templates=(
        Template("Hi, {cue} {when}. What do I need to send you to get this covered?", ("my",)),
        Template("{name} called to report that {cue} {when}. Policy number {ref}.", ("their",)),
        Template("Claim note: {cue} {when}. Estimated cost is {amount}.", ("their", "the")),
        Template("We need help with a claim: {cue} {when}. {closing}", ("our",)),
        Template("Submitting a claim because {cue} {when}. {closing}", ("my", "our")),
        Template("Adjuster summary for {ref}: the policyholder says {cue} {when}.", ("their",)),
        Template("{Cue} {when}, and {name} asks how much will be reimbursed.", ("the", "their")),
        Template("Hello, this is {name}. {Cue} {when}. {closing}", ("my", "our")),
    ),
    corpus_templates=(
        Template("Case file {ref}. {Cue} {when}.", ("the", "their")),
        Template("In one case last year, {cue}.", ("the", "a customer's")),
        Template("The customer wrote that {cue} {when}.", ("their",)),
        Template("{name} phoned the insurer because {cue} {when}.", ("their",)),
        Template("Good morning, {cue} {when} and I would like to make a claim.", ("my", "our")),
        Template("From the claims log: {cue}; the estimate was {amount}.", ("the", "their")),
    ),
    routing_sentences=(
        "The claims desk sent it to the {label} team.",
        "It was filed as a {label} claim.",
        "This is a typical {label} claim.",
        "An adjuster from the {label} team reviewed it.",
        "The {label} team paid the claim within two weeks.",
    ),
    facts=MappingProxyType(
        {
            "auto": (
                "Auto claims cover cars, trucks, vans and motorcycles.",
                "A collision, a cracked windshield or a stolen car is handled by the auto team.",
                "When a deer hits a pickup truck on the highway, the insurer opens an auto claim.",
                "Vandalism to a parked vehicle is an auto claim.",
                "The auto team asks for photos of the bumper, the tires and the license plate.",
                "Accidents on icy roads fill the auto queue every winter.",
            ),
            "property": (
                "Property claims cover houses, apartments, garages and what is inside them.",
                "Burst pipes, roof leaks and storm damage are property claims.",
                "A fire in the kitchen or a burglary at home goes to the property team.",
                "Hail on the roof and a fallen tree on the garage are common property claims.",
                "The property team sends an inspector to look at the ceiling, walls and floors.",
                "Mold after a leak and a flooded basement are handled as property claims.",
            ),
            "health": (
                "Health claims cover doctors, hospitals, surgery and prescriptions.",
                "A broken wrist, an emergency room visit or an ambulance ride is a health claim.",
                "Dental surgery and physical therapy are reimbursed by the health team.",
                "The health team needs the invoice from the clinic or the hospital.",
                "Stitches, crutches and an MRI scan are typical health expenses.",
                "A stay in intensive care is one of the most expensive health claims.",
            ),
        }
    ),
    slots=MappingProxyType(
        {
            "when": (
                "last night",
                "yesterday afternoon",
                "on Monday morning",
                "two days ago",
                "over the weekend",
                "earlier today",
                "last Friday",
                "during our vacation",
                "this morning",
                "on the third of March",
            ),
            "name": _NAMES,
            "closing": (
                "Please call me back.",
                "Photos are attached.",
                "I kept all the receipts.",
                "Thank you for your help.",
                "How long will this take?",
                "Let me know what else you need.",
            ),
        }
    ),
)

_IT_SUPPORT = DomainSpec(
    name="it-support",
    instruction="Which queue should take this ticket: network, hardware or access?",
    cues=MappingProxyType(
        {
            "network": (
                "the wifi keeps dropping in the meeting rooms",
                "the VPN disconnects every few minutes",
                "{poss} internet connection is extremely slow",
                "websites time out but the intranet loads fine",
                "DNS lookups fail for external sites",
                "the ethernet port at {poss} desk has no link light",
                "video calls freeze because of packet loss",
                "the office router reboots every hour",
                "latency to the cloud servers spiked this week",
                "the firewall blocks the supplier's website",
                "the branch office lost its connection to headquarters",
                "the wireless signal on {poss} floor is very weak",
            ),
            "hardware": (
                "{poss} laptop screen flickers and goes black",
                "{poss} keyboard has several sticky keys",
                "the printer on the third floor jams on every page",
                "{poss} laptop battery drains within an hour",
                "the docking station does not detect the second monitor",
                "{poss} desktop fan makes a loud grinding noise",
                "{poss} mouse stopped responding even with new batteries",
                "the hard drive in {poss} workstation makes clicking sounds",
                "{poss} webcam shows only a black image",
                "the headset microphone crackles during calls",
                "{poss} computer will not power on",
                "the projector in the boardroom has a dead bulb",
            ),
            "access": (
                "{poss} password expired and the account is locked",
                "{poss} account was disabled after too many login attempts",
                "a new hire needs an email account by Monday",
                "permission to the finance shared folder is missing",
                "two-factor codes never arrive when logging in",
                "the HR portal rejects {poss} credentials",
                "{poss} badge no longer opens the server room door",
                "admin rights are needed to install the approved software",
                "the contractor's login should be revoked today",
                "single sign-on loops back to the login page",
                "{poss} password reset link has expired",
                "the sales dashboard says permission denied",
            ),
        }
    ),
    task_templates=(
        Template("Hi team, {cue} since {when}. Can someone take a look?", ("my",)),
        Template("Ticket from {name} in {dept}: {cue}.", ("their", "the")),
        Template(
            "User reports that {cue}. It has been like this since {when}. {closing}",
            ("their", "the"),
        ),
        Template("Urgent: {cue} and {name} cannot work.", ("their", "the")),
        Template("Hello, I work in {dept}. {Cue}. {closing}", ("my",)),
        Template("Since {when}, {cue}. Please help.", ("my", "our")),
        Template("{Cue} again since {when}; ticket {ref} was closed too early.", ("my", "the")),
        Template("Request from {dept}: {cue}. {closing}", ("our", "the")),
    ),
    corpus_templates=(
        Template("Incident {ref}. {Cue}.", ("the", "a user's")),
        Template("A colleague in {dept} mentioned that {cue}.", ("their",)),
        Template("Last month a user said that {cue}.", ("their", "the")),
        Template("{name} wrote to the service desk: {cue} since {when}.", ("my", "the")),
        Template("Hey, {cue} again. {closing}", ("my", "the")),
        Template("Help desk note from {dept}: {cue}.", ("their", "the")),
    ),
    routing_sentences=(
        "The service desk moved it to the {label} queue.",
        "It was logged as a {label} ticket.",
        "This is a typical {label} ticket.",
        "An engineer from the {label} team picked it up.",
        "The {label} team resolved it the same day.",
    ),
    facts=MappingProxyType(
        {
            "network": (
                "Network tickets are about wifi, VPN, routers, firewalls and slow connections.",
                "Packet loss, DNS failures and a dead ethernet port go to the network queue.",
                "The network team checks the router logs when video calls freeze.",
                "A weak wireless signal on one floor is a network problem.",
                "When a branch office loses its connection, the network team is paged.",
                "Latency and timeouts are investigated by the network engineers.",
            ),
            "hardware": (
                "Hardware tickets are about laptops, printers, monitors, keyboards and mice.",
                "A flickering screen or a battery that drains quickly is a hardware problem.",
                "The hardware team replaces broken webcams, headsets and docking stations.",
                "Paper jams and dead projector bulbs belong in the hardware queue.",
                "A computer that will not power on is sent to the hardware bench.",
                "Clicking hard drives and noisy fans are replaced by the hardware team.",
            ),
            "access": (
                "Access tickets are about passwords, accounts, permissions and badges.",
                "A locked account or an expired password goes to the access queue.",
                "The access team grants folder permissions and admin rights.",
                "New hires get their email login from the access team.",
                "Two-factor problems and single sign-on loops are access issues.",
                "When a contractor leaves, the access team revokes the login.",
            ),
        }
    ),
    slots=MappingProxyType(
        {
            "when": (
                "yesterday",
                "this morning",
                "last week",
                "the update on Tuesday",
                "lunch time",
                "the office move",
                "early today",
                "Monday",
                "the holidays",
                "the power cut",
            ),
            "name": _NAMES,
            "dept": (
                "finance",
                "marketing",
                "the legal office",
                "sales",
                "human resources",
                "the warehouse",
                "customer support",
                "engineering",
                "procurement",
            ),
            "closing": (
                "Thanks in advance.",
                "This is blocking my work.",
                "Not urgent.",
                "I already restarted twice.",
                "Please advise.",
                "Happy to jump on a call.",
            ),
        }
    ),
)

SPECS: Final = MappingProxyType({spec.name: spec for spec in (_INSURANCE, _IT_SUPPORT)})
