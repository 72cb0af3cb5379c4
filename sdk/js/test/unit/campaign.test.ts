import { describe, expect, it } from 'vitest';

import { campaignFromQuery } from '../../src/autocapture';

describe('campaignFromQuery', () => {
  it('reads the UTM parameters as Segment names them in context.campaign', () => {
    expect(campaignFromQuery('?utm_source=google&utm_medium=cpc&utm_campaign=brand&utm_term=shoes&utm_content=ad1&x=1'))
      .toEqual({ source: 'google', medium: 'cpc', name: 'brand', term: 'shoes', content: 'ad1' });
  });

  it('is undefined without UTM parameters, and skips empty ones', () => {
    expect(campaignFromQuery('')).toBeUndefined();
    expect(campaignFromQuery('?q=dress&utm_source=')).toBeUndefined();
  });

  it('keeps the first of a repeated parameter, decodes it, and cuts long values', () => {
    expect(campaignFromQuery('?UTM_SOURCE=news%20letter&utm_source=other')).toEqual({ source: 'news letter' });
    expect(campaignFromQuery(`?utm_source=${'a'.repeat(10_000)}`)?.source).toHaveLength(256);
  });

  it('ignores names that only look like object keys', () => {
    expect(campaignFromQuery('?constructor=1&__proto__=2&toString=3')).toBeUndefined();
  });
});
