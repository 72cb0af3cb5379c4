import { describe, expect, it } from 'vitest';

import { engagement as track } from '../../src/engagement';

function setup(startHidden = false) {
  const sent: Array<[number, string]> = [];
  let clock = 0;
  let hidden = startHidden;
  const engagement = track((ms, url) => sent.push([ms, url]), () => hidden, () => clock);
  return {
    engagement, sent,
    advance: (ms: number) => { clock += ms; },
    hide: () => { hidden = true; engagement.report(); },
    show: () => { hidden = false; engagement.shown(); },
  };
}

describe('Engagement', () => {
  it('reports the visible time so far at each hide, not the hidden time', () => {
    const { engagement, sent, advance, hide, show } = setup();
    engagement.start('https://s.example/products/a');
    advance(4000.4);
    hide();
    advance(60_000); // hidden: not counted
    show();
    advance(1500);
    hide();
    expect(sent).toEqual([[4000, 'https://s.example/products/a'], [5500, 'https://s.example/products/a']]);
  });

  it('reports the previous page when the next page view starts, then counts afresh', () => {
    const { engagement, sent, advance } = setup();
    engagement.start('https://s.example/a');
    advance(2000);
    engagement.start('https://s.example/b');
    advance(700);
    engagement.report();
    expect(sent).toEqual([[2000, 'https://s.example/a'], [700, 'https://s.example/b']]);
  });

  it('sends nothing new twice (visibilitychange then pagehide), nor before a page view', () => {
    const { engagement, sent, advance, hide } = setup();
    engagement.report();
    engagement.shown();
    advance(100);
    engagement.report();
    expect(sent).toEqual([]);
    engagement.start('https://s.example/a');
    advance(300);
    hide();
    engagement.report(); // pagehide after visibilitychange
    expect(sent).toEqual([[300, 'https://s.example/a']]);
  });

  it('counts nothing for a page opened in the background until it is shown', () => {
    const { engagement, sent, advance, show, hide } = setup(true);
    engagement.start('https://s.example/a');
    advance(10_000);
    show();
    advance(250);
    hide();
    expect(sent).toEqual([[250, 'https://s.example/a']]);
  });

  it('a clock stepping back adds no negative time', () => {
    const { engagement, sent, advance, hide } = setup();
    engagement.start('https://s.example/a');
    advance(-5000);
    hide();
    expect(sent).toEqual([]);
  });
});
