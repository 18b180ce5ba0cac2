/* roster.h - the built-in expert roster used when a panel names no experts. */
#ifndef AP_PANEL_ROSTER_H
#define AP_PANEL_ROSTER_H

/* Five distinct personas as a JSON array of expert objects (id, name, role, expertise,
 * persona, model, weight). Static storage. */
const char *panel_roster_default_json(void);

#endif
